"""Issue 15 regressions on the gateway side: the Wire's handshake, configuration and exposure,
slow clients, and /metrics across processes. Each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import uvicorn
from gateway_support import OPERATOR, STOREFRONT, bearer, receive, wait_until_serving
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate import cli
from stockgate.embedded import EmbeddedRedis, free_port
from stockgate.errors import StoreUnavailable
from stockgate.settings import ConfigError, Settings, load_settings
from stockgate.stock import StockEngine
from stockgate.wire import HandshakeRefused, Wire

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


# ---- item 9: the Wire's handshake ----------------------------------------------------------

async def test_refused_select_sends_nothing_queued_behind_it(
        redis_server: EmbeddedRedis, redis: Redis) -> None:
    """`/99` names a database the server does not have: before the fix the SELECT was
    refused but the SET pipelined behind it in the same write ran, in database 0."""
    wrong_db = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/99")
    wire = Wire(wrong_db)
    try:
        results = await asyncio.gather(wire.call("SET", "wire-k1", "v"),
                                       wire.call("SET", "wire-k2", "v"),
                                       return_exceptions=True)
        assert all(isinstance(r, HandshakeRefused) for r in results), results
        assert "SELECT" in str(results[0])
        # The next call connects again and is refused again, still writing nothing.
        again = await asyncio.gather(wire.call("SET", "wire-k3", "v"), return_exceptions=True)
        assert isinstance(again[0], HandshakeRefused)
    finally:
        wire.close()
        await wrong_db.aclose()
    assert await redis.exists("wire-k1", "wire-k2", "wire-k3") == 0


async def test_refused_auth_sends_nothing_and_hides_the_password(
        redis_server: EmbeddedRedis, redis: Redis) -> None:
    """The test server has no password, so any AUTH is refused: nothing behind it may run."""
    password = "not-the-password-0123456789"
    bad = Redis.from_url(redis_server.url.replace("redis://", f"redis://:{password}@"))
    wire = Wire(bad)
    try:
        result = (await asyncio.gather(wire.call("SET", "wire-auth", "v"),
                                       return_exceptions=True))[0]
    finally:
        wire.close()
        await bad.aclose()
    assert isinstance(result, HandshakeRefused) and "AUTH" in str(result)
    assert password not in str(result)
    assert await redis.exists("wire-auth") == 0


async def test_stock_engine_answers_unavailable_on_a_refused_select(
        redis_server: EmbeddedRedis, redis: Redis, settings: Settings) -> None:
    """Through the engine a refused handshake is a 503-class error, and no stock moves."""
    good = StockEngine(redis, settings)
    await good.load_scripts()  # the scripts are server-wide: db 99 is the only difference
    await good.adjust("default", "SKU-W", reason="receipt", idempotency_key="w1", delta=5)
    good.scripts.close()
    wrong_db = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/99")
    engine = StockEngine(wrong_db, settings)
    try:
        with pytest.raises(StoreUnavailable):
            await engine.adjust("default", "SKU-W", reason="receipt", idempotency_key="w2",
                                delta=5)
    finally:
        engine.scripts.close()
        await wrong_db.aclose()
    fresh = StockEngine(redis, settings)
    try:
        view = await fresh.stock("default", "SKU-W")
    finally:
        fresh.scripts.close()
    assert view.locations["main"].on_hand == 5


# ---- item 10: configuration and exposure ---------------------------------------------------

REFS = """
redis_url = "env:SGT_REDIS_URL"
metrics_token = "env:SGT_METRICS_TOKEN"
[api_keys.sf]
secret = "env:SGT_SF_KEY"
[channels.shop]
kind = "shopify"
secret = "env:SGT_SHOP_SECRET"
access_token = "env:SGT_SHOP_TOKEN"
"""


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stockgate.toml"
    path.write_text(text)
    return str(path)


def test_every_unset_env_reference_is_named_in_one_error(tmp_path: Path) -> None:
    """Before: an unset redis_url quietly meant "start an empty embedded server", an unset
    access_token an empty one, an unset metrics token an open /metrics."""
    env = {"SGT_SF_KEY": "sf-value-0123456789", "SGT_SHOP_SECRET": "shop-value-0123456789",
           "SGT_METRICS_TOKEN": ""}  # empty counts as unset (`X=${X}` in a compose file)
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, REFS), env=env)
    message = str(caught.value)
    for named in ("redis_url (env:SGT_REDIS_URL)", "metrics_token (env:SGT_METRICS_TOKEN)",
                  "channels.shop.access_token (env:SGT_SHOP_TOKEN)"):
        assert named in message
    assert "api_keys.sf.secret" not in message and "channels.shop.secret" not in message
    assert "sf-value" not in message and "shop-value" not in message


def test_set_env_references_resolve(tmp_path: Path) -> None:
    env = {"SGT_REDIS_URL": "redis://127.0.0.1:1/0", "SGT_METRICS_TOKEN": "m-token",
           "SGT_SF_KEY": "k", "SGT_SHOP_SECRET": "s", "SGT_SHOP_TOKEN": "t"}
    settings = load_settings(_config(tmp_path, REFS), env=env)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.metrics_token == "m-token"
    assert settings.channels["shop"].access_token == "t"


def test_two_api_keys_with_one_secret_are_refused(tmp_path: Path) -> None:
    """Before: the secret resolved to whichever key came last, here turning one tenant's
    operator key into another tenant's storefront key."""
    text = """
[api_keys.acme-operator]
tenant = "acme"
secret = "env:SGT_A"
scopes = ["operator"]
[api_keys.globex-storefront]
tenant = "globex"
secret = "env:SGT_B"
"""
    shared = "the-same-secret-0123456789"
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, text), env={"SGT_A": shared, "SGT_B": shared})
    message = str(caught.value)
    assert "acme-operator" in message and "globex-storefront" in message
    assert shared not in message
    # Distinct secrets are fine.
    load_settings(_config(tmp_path, text), env={"SGT_A": shared, "SGT_B": shared + "x"})


@pytest.fixture
async def token_client(gw_settings: Settings, redis: Redis
                       ) -> AsyncIterator[httpx.AsyncClient]:
    settings = msgspec.structs.replace(gw_settings, metrics_token="metrics-token-0123456789")
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://gw") as c:
        yield c


async def test_metrics_token_guards_the_scrape(token_client: httpx.AsyncClient) -> None:
    for headers in ({}, bearer("wrong"), bearer(OPERATOR), {"Authorization": "Basic x"},
                    {"Authorization": "Bearer metrics-token-012345678"}):
        r = await token_client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert "stockgate_http_requests_total" not in r.text
    r = await token_client.get("/metrics", headers=bearer("metrics-token-0123456789"))
    assert r.status_code == 200 and "stockgate_http_requests_total" in r.text
    # Health and readiness stay open: probes carry no token.
    assert (await token_client.get("/healthz")).status_code == 200


async def test_metrics_stay_open_without_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 200


def _run_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, host: str,
            capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """`stockgate up` without a config file, its child processes replaced by ones that have
    already exited: what it prints, and the key it made."""

    class Exited:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def terminate(self) -> None:
            pass

        def kill(self) -> None:
            pass

    monkeypatch.delenv("STOCKGATE_CONFIG", raising=False)
    monkeypatch.delenv("SG_LOCAL_KEY", raising=False)
    monkeypatch.setenv("STOCKGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", redis_url)  # no embedded server for this
    monkeypatch.setattr(subprocess, "Popen", Exited)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    cli.main(["up", "--host", host, "--port", "8999"])
    key_file = tmp_path / cli.LOCAL_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    return capsys.readouterr().out, key_file.read_text().strip()


def test_up_on_every_interface_does_not_print_the_operator_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: EmbeddedRedis,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, key = _run_up(monkeypatch, tmp_path, redis_server.url, "0.0.0.0", capsys)
    assert key and key not in out
    assert str(tmp_path / cli.LOCAL_KEY_FILE) in out


def test_up_on_loopback_prints_the_operator_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: EmbeddedRedis,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, key = _run_up(monkeypatch, tmp_path, redis_server.url, "127.0.0.1", capsys)
    assert f"Bearer {key}" in out


def test_loopback_detection() -> None:
    assert all(cli.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]",
                                             "localhost"))
    assert not any(cli.is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5",
                                                 "example.com"))


async def test_openapi_says_the_retry_route_answers_202(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    responses = doc["paths"]["/v1/deliveries/{delivery_id}/retry"]["post"]["responses"]
    assert "202" in responses and "200" not in responses


# ---- item 11: slow clients -----------------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(app: Starlette, settings: Settings) -> AsyncIterator[int]:
    """The app under a real uvicorn on 127.0.0.1 with the production options (the app's
    lifespan is the caller's)."""
    from gateway.server import uvicorn_options

    port = free_port()
    options = {**uvicorn_options(settings, "127.0.0.1", port), "lifespan": "off",
               "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


STALLED = 40  # connections; a bounded stand-in for the 2,000


def _stalled_request(i: int) -> bytes:
    """Headers announcing 200 bytes of body, then only the first few: half holds (which
    authenticate before reading), half webhooks (which read before verifying)."""
    path, extra = (("/v1/holds", f"Authorization: Bearer {STOREFRONT}\r\n") if i % 2 == 0
                   else ("/webhooks/shop", "X-Shopify-Topic: orders/create\r\n"))
    return (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: 200\r\n{extra}\r\n" + '{"lines": [').encode()


async def test_a_body_that_stalls_gets_408_and_its_connection_closed(
        gw_settings: Settings, redis: Redis) -> None:
    """Before: each stalled connection was held open, its request task waiting for ever."""
    settings = msgspec.structs.replace(gw_settings, body_timeout_s=0.5)
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application), \
            serving(application, settings) as port:
        await receive(httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                        base_url="http://gw"), "SKU-SLOW", 5)
        connections = [await asyncio.open_connection("127.0.0.1", port)
                       for _ in range(STALLED)]
        started = time.monotonic()
        for i, (_, writer) in enumerate(connections):
            writer.write(_stalled_request(i))
            await writer.drain()

        async def answer(reader: asyncio.StreamReader) -> bytes:
            return await reader.read()  # until the server closes the connection

        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(answer(reader) for reader, _ in connections)), timeout=5)
        finally:
            for _, writer in connections:
                writer.close()
        elapsed = time.monotonic() - started
        assert all(a.startswith(b"HTTP/1.1 408 ") and b'"body_timeout"' in a
                   and b"connection: close" in a.lower() for a in answers), answers[:2]
        assert elapsed < 3

        # A body that arrives in parts, in full within the deadline, is served as usual.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"hold_id": "slow-ok", "lines": [{"sku": "SKU-SLOW", "qty": 1}]}'
        writer.write(b"POST /v1/holds HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json"
                     b"\r\nAuthorization: Bearer " + STOREFRONT.encode()
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(body[10:])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status.startswith(b"HTTP/1.1 201 "), status


def test_uvicorn_bounds_idle_connections_and_concurrency(settings: Settings) -> None:
    from gateway.server import KEEP_ALIVE_S, uvicorn_options

    options = uvicorn_options(settings, "127.0.0.1", 8000)
    assert options["timeout_keep_alive"] == KEEP_ALIVE_S <= 10
    assert options["limit_concurrency"] == settings.max_connections


# ---- item 13: /metrics summed over the gateway's processes ---------------------------------

def _value(text: str, series: str) -> int:
    found = re.search(re.escape(series) + r" (\d+)", text)
    return int(found.group(1)) if found else 0


async def test_one_scrape_sums_every_process_sharing_the_run(
        gw_settings: Settings, redis: Redis, tmp_path: Path) -> None:
    """Two gateway apps (as two `serve --workers 2` processes are) with one metrics
    directory: a scrape of either shows both processes' requests. Before: only its own."""
    settings = msgspec.structs.replace(gw_settings, metrics_dir=str(tmp_path / "metrics"))
    first, second = create_app(settings, redis), create_app(settings, redis)
    healthz = 'stockgate_http_requests_total{route="/healthz",method="GET",status="200"}'
    created = 'stockgate_holds_total{result="created"}'
    async with first.router.lifespan_context(first), \
            second.router.lifespan_context(second), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=first),
                              base_url="http://gw") as a, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second),
                              base_url="http://gw") as b:
        await receive(a, "SKU-M", 10)
        for _ in range(3):
            assert (await a.get("/healthz")).status_code == 200
        for i in range(2):
            assert (await b.get("/healthz")).status_code == 200
            r = await b.post("/v1/holds", headers=bearer(STOREFRONT),
                             json={"hold_id": f"mp-{i}", "lines": [{"sku": "SKU-M", "qty": 1}]})
            assert r.status_code == 201
        deadline = time.monotonic() + 5
        while True:
            text_a = (await a.get("/metrics")).text
            text_b = (await b.get("/metrics")).text
            if _value(text_a, healthz) == 5 and _value(text_b, healthz) == 5:
                break
            assert time.monotonic() < deadline, (_value(text_a, healthz),
                                                 _value(text_b, healthz))
            await asyncio.sleep(0.1)
        assert _value(text_a, created) == 2 == _value(text_b, created)
        assert _value(text_a, 'stockgate_script_duration_seconds_count{op="hold"}') == 2


def test_serve_with_two_workers_scrapes_the_sum(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    """End to end: `stockgate serve --workers 2`, requests on fresh connections (spread over
    both processes by the kernel), and every scrape, whichever process answers it, shows
    all of them."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("STOCKGATE_CONFIG", "STOCKGATE_METRICS_DIR")}
    env.update(REDIS_URL=redis_server.url, STOCKGATE_DATA_DIR=str(tmp_path),
               STOCKGATE_LOG_LEVEL="WARNING")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "stockgate.cli", "serve", "--port", str(port),
             "--workers", "2"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    healthz = 'stockgate_http_requests_total{route="/healthz",method="GET",status="200"}'
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"Connection": "close"}) as c:
            wait_until_serving(serve, c, log_path)
            time.sleep(1.0)  # both processes up before the requests
            served = 1
            for _ in range(40):
                assert c.get("/healthz").status_code == 200
                served += 1
            deadline = time.monotonic() + 10
            seen: list[int] = []
            while len(seen) < 6 or set(seen[-6:]) != {served}:
                seen.append(_value(c.get("/metrics").text, healthz))
                assert time.monotonic() < deadline, (served, seen)
                time.sleep(0.1)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(15)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
