"""schemathesis against the gateway's own /openapi.json, in process over ASGI: every operation,
with requests that fit the document (positive) and requests that break it (negative), sent
with an operator key. No response may be a server error, and every response must be one the
document declares (status code and content type), so the document cannot drift from the app.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from gateway_support import OPERATOR, bearer, gateway_settings
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings

EXAMPLES = 60  # per operation and mode: 11 operations x 2 modes x 60 = 1,320 cases
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
cases: Counter[str] = Counter()


@pytest.fixture(scope="module")
def app(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Starlette]:
    # No Redis client passed in: schemathesis runs the app (and its lifespan, which opens the
    # client) on an event loop of its own.
    data_dir = tmp_path_factory.mktemp("schemathesis")
    application = create_app(gateway_settings(Settings(data_dir=str(data_dir),
                                                       redis_url=redis_server.url)))
    with asgi.get_client(application) as client:
        client.post("/v1/stock/SKU-1/adjust", headers=bearer(OPERATOR), json={
            "delta": 1000, "reason": "receipt", "idempotency_key": "st-seed"}).raise_for_status()
    yield application
    asgi.shutdown_lifespans()


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
        case.call_and_validate(headers=bearer(OPERATOR), checks=CHECKS)
        sent += 1

    call()
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_document_holds_for_every_operation(app: Starlette, mode: GenerationMode
                                                    ) -> None:
    operations = _operations(app)
    assert len(operations) >= 10
    for operation in operations:
        cases[f"{mode.value} {operation.label}"] = _exercise(operation, mode)
    # Hypothesis stops early when it runs out of distinct inputs: still a real workout.
    assert sum(cases[f"{mode.value} {op.label}"] for op in operations) >= \
        len(operations) * EXAMPLES // 2, cases
