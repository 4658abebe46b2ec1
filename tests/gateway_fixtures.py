"""Fixtures for the gateway tests: a configured app on the session's Redis, driven through
httpx's ASGI transport with the app's lifespan running. Test modules load it with
`pytest_plugins = ["gateway_fixtures"]`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from gateway_support import gateway_settings
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.settings import Settings


@pytest.fixture
def gw_settings(settings: Settings) -> Settings:
    return gateway_settings(settings)


@pytest.fixture
async def app(gw_settings: Settings, redis: Redis) -> AsyncIterator[Starlette]:
    application = create_app(gw_settings, redis)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


@pytest.fixture
async def short_ttl_client(gw_settings: Settings, redis: Redis
                           ) -> AsyncIterator[httpx.AsyncClient]:
    """The idempotency TTL shortened to 1 s (3 days in production), the return window not;
    replace() skips Settings' validation (idempotency_ttl_s >= 1 day)."""
    settings = msgspec.structs.replace(gw_settings, idempotency_ttl_s=1)
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://gw") as c:
        yield c
