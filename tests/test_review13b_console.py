"""Second review of the console fixes (129e3a0): each test FAILS on d1a9d73."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from echo_support import echoing
from gateway_support import OPERATOR, bearer
from redis.asyncio import Redis
from starlette.applications import Starlette
from workers_helpers import OPERATOR_KEY, running_worker, settings_with, wait_for

from gateway.app import create_app
from gateway.console_session import COOKIE, SignInGuard
from stockgate.alerts import list_alerts
from stockgate.deliveries import FailedDelivery, encode_failed, failed_deliveries
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import worker_keys
from stockgate.settings import Channel

pytest_plugins = ["gateway_fixtures"]

TOKEN = "tok-LIVE-secret-0123456789"


# ---- A. a token cut by an excerpt before the scrub keeps all but its tail -------------------

def _padded(auth: str) -> str:
    # "Bearer tok-LIVE-secret-0123456789": padded so the 200-character excerpt cuts the
    # token's last 4 characters off.
    keep = len("Authorization: ") + len(auth) - 4
    return "x" * (200 - keep) + f"Authorization: {auth} (request rejected)"


_PaddedEcho = echoing(_padded)


async def test_a_token_cut_at_the_excerpt_is_not_left_mostly_whole(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PaddedEcho)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        channel = Channel(kind="standard", secret="whsec-unused-0123",
                          api_url=f"http://127.0.0.1:{server.server_address[1]}",
                          access_token=TOKEN, rate_limit_per_s=200.0, tenant="default")
        settings = settings_with(tmp_path, {"std": channel})
        application = create_app(settings, redis)
        async with running_worker(settings, redis_server.url), \
                application.router.lifespan_context(application), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=application),
                    base_url="https://console.test") as web:
            await application.state.engine.adjust("default", "SKU-S", reason="receipt",
                                                  idempotency_key="s1", delta=3)

            async def parked() -> bool:
                return bool(await failed_deliveries(redis, "default")) and bool(
                    await list_alerts(redis, "default", type="delivery_failing"))
            await wait_for(parked, 20)
            r = await web.post("/console/session", json={"key": OPERATOR_KEY})
            assert r.status_code == 200, r.text
            channels = (await web.get("/console/api/channels")).text
            stored = (await failed_deliveries(redis, "default"))[0].last_error
    finally:
        server.shutdown()
    partial = TOKEN[:-4]  # 22 of the token's 26 characters: 4 left to guess
    leaks = [where for where, text in (("parked delivery", stored),
                                       ("GET /console/api/channels", channels),
                                       ("log", caplog.text)) if partial in text]
    assert not leaks, f"all but 4 characters of the token are in: {leaks} ({stored!r})"


# ---- B. /v1/deliveries and /v1/alerts hand out what the console scrubs -----------------------

@pytest.fixture
async def token_app(gw_settings: Any, redis: Redis) -> Any:
    channels = {**gw_settings.channels,
                "std": msgspec.structs.replace(gw_settings.channels["std"],
                                               access_token=TOKEN,
                                               api_url="http://127.0.0.1:9")}
    settings = msgspec.structs.replace(gw_settings, channels=channels)
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application):
        yield application


async def test_operator_api_returns_the_records_the_console_scrubs(
        token_app: Starlette, redis: Redis) -> None:
    from workers.adapters.base import PushError
    from workers.queue import Acknowledged, RetryConfig, run_acknowledged

    # A delivery parked before 129e3a0 (the console's own comment: "records written before
    # the workers scrubbed errors may still hold a channel's credentials") ...
    old = FailedDelivery(id="d-old", tenant="acme", channel="std", sku="SKU-1",
                         location="main", attempts=8, failed_at=1,
                         last_error=f"std: HTTP 500 echo: Authorization: Bearer {TOKEN}")
    await redis.hset(worker_keys("acme").failed, "d-old", encode_failed(old))
    # ... and an order fetch that fails today with the channel's 401 page echoing the token
    # (workers/queue.py run_acknowledged: alert detail and logs carry str(exc) unscrubbed).
    job = Acknowledged(tenant="acme", channel="std", alert="order_fetch_failed",
                       what="order 1 from std (delivery h1)", ref="std:1",
                       once="order_fetch_failed:std:h1")

    async def attempt() -> str:
        raise PushError(f"std: HTTP 401 invalid token {TOKEN}", status=401)

    runtime = SimpleNamespace(redis=redis, settings=token_app.state.settings)
    ctx = {"job_try": 1, "runtime": runtime}
    assert await run_acknowledged(ctx, RetryConfig(), job, attempt) == "failed"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=token_app),
                                 base_url="https://console.test") as c:
        r = await c.post("/console/session", json={"key": OPERATOR})
        assert r.status_code == 200
        console_channels = (await c.get("/console/api/channels")).text
        console_overview = (await c.get("/console/api/overview")).text
        deliveries = (await c.get("/v1/deliveries", headers=bearer(OPERATOR))).text
        alerts = (await c.get("/v1/alerts", headers=bearer(OPERATOR))).text
    assert TOKEN not in console_channels and TOKEN not in console_overview  # scrubbed there
    stored = [a.detail for a in await list_alerts(redis, "acme")]
    leaks = [where for where, text in (("GET /v1/deliveries", deliveries),
                                       ("GET /v1/alerts", alerts),
                                       ("stored alert", " ".join(stored))) if TOKEN in text]
    assert not leaks, f"the channel's access token is in: {leaks}"


# ---- C. an adapter's unexpected exception is logged raw --------------------------------------

async def test_an_adapter_exception_is_logged_without_the_token(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.adapters.generic import GenericAdapter

    async def push_batch(self: Any, items: Any) -> Any:
        # e.g. a body the adapter could not read, quoted in the exception
        raise ValueError(f"unexpected body: {{'echo': 'Bearer {TOKEN}'}}")

    monkeypatch.setattr(GenericAdapter, "push_batch", push_batch)
    caplog.set_level("INFO")
    channel = Channel(kind="standard", secret="whsec-unused-0123", api_url="http://127.0.0.1:9",
                      access_token=TOKEN, rate_limit_per_s=200.0, tenant="default")
    settings = settings_with(tmp_path, {"std": channel})
    application = create_app(settings, redis)
    async with running_worker(settings, redis_server.url), \
            application.router.lifespan_context(application):
        await application.state.engine.adjust("default", "SKU-S", reason="receipt",
                                              idempotency_key="s1", delta=3)

        async def parked() -> bool:
            return bool(await failed_deliveries(redis, "default"))
        await wait_for(parked, 20)
    stored = (await failed_deliveries(redis, "default"))[0].last_error
    assert TOKEN not in stored  # the parked record is scrubbed ...
    assert TOKEN not in caplog.text, "... the log.exception in push_due is not"


# ---- D. the sign-in guard's eviction is a full scan per failure once full --------------------

def test_sign_in_guard_failure_cost_when_full_is_not_linear(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed (a timed bound flakes on a busy machine): once full, the guard
    walks its table once per tenth of it, not once per failure."""
    guard = SignInGuard()
    for i in range(SignInGuard.max_addresses):  # a sweep within the minute: none expired
        guard.failed(f"2001:db8::{i:x}")
    walks = 0
    evict = guard._evict

    def counted(now: float) -> None:
        nonlocal walks
        walks += 1
        evict(now)

    monkeypatch.setattr(guard, "_evict", counted)
    for i in range(2_000):
        guard.failed(f"2001:db8:1::{i:x}")
    # Each walk takes the table down to 90%: 2,000 new addresses need two.
    assert walks <= 2, f"{walks} walks of the whole table for 2,000 failed sign-ins"
    assert len(guard._failures) <= SignInGuard.max_addresses


# ---- E. a single-tenant gateway whose stream cap is under the per-tenant cap -----------------

async def test_a_tenants_newest_console_takes_its_own_oldest_when_the_process_is_full(
        gw_settings: Any, redis: Redis) -> None:
    """README: "a tenant's ninth console takes its own oldest one's place; a full process
    takes one from the tenant holding the most". With console_max_streams=2 (below the
    per-tenant 8) the third console of the only tenant is refused instead."""
    settings = msgspec.structs.replace(gw_settings, console_max_streams=2)
    application = create_app(settings, redis)
    hang_up = asyncio.Event()
    statuses: list[int] = []

    async def receive_() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def scope(cookie: str) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": "/console/api/live",
                "raw_path": b"/console/api/live", "query_string": b"", "root_path": "",
                "scheme": "https", "http_version": "1.1", "server": ("console.test", 443),
                "client": ("127.0.0.1", 40000),
                "headers": [(b"host", b"console.test"), (b"cookie", cookie.encode())]}

    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="https://console.test") as c:
        tasks = []
        for _ in range(3):
            r = await c.post("/console/session", json={"key": OPERATOR})
            cookie = f"{COOKIE}={r.headers['set-cookie'].split(';')[0].split('=', 1)[1]}"
            tasks.append(asyncio.create_task(application(scope(cookie), receive_, send)))
            await asyncio.sleep(0.3)
        hang_up.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert statuses == [200, 200, 200], statuses


# ---- F. a stream whose client left before the reply started keeps its slot -------------------

@pytest.mark.parametrize("spec", ["2.3", "2.4"])  # uvicorn 0.55's httptools/h11 say 2.3
async def test_a_stream_that_never_started_does_not_keep_its_slot(
        app: Starlette, spec: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test") as c:
        cookies = []
        for _ in range(3):
            r = await c.post("/console/session", json={"key": OPERATOR})
            cookies.append(
                f"{COOKIE}={r.headers['set-cookie'].split(';')[0].split('=', 1)[1]}")

    async def receive_() -> dict[str, Any]:
        return {"type": "http.disconnect"}  # the client hung up while live() read Redis

    async def send(message: dict[str, Any]) -> None:
        if spec == "2.4" and message["type"] == "http.response.start":
            raise OSError("connection reset")  # ASGI 2.4: send raises on a gone client

    for cookie in cookies:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec},
                 "method": "GET", "path": "/console/api/live",
                 "raw_path": b"/console/api/live", "query_string": b"", "root_path": "",
                 "scheme": "https", "http_version": "1.1", "server": ("console.test", 443),
                 "client": ("127.0.0.1", 40000),
                 "headers": [(b"host", b"console.test"), (b"cookie", cookie.encode())]}
        with contextlib.suppress(Exception):
            await app(scope, receive_, send)
    await asyncio.sleep(0.1)
    assert app.state.console_streams == {}, (
        f"{len(app.state.console_streams)} stream slot(s) held by streams that never ran")


# ---- G. the way-out scrub truncates legitimate alert text to 500 characters ------------------

async def test_console_shows_a_channel_alert_in_full(
        web_app: Starlette, redis: Redis) -> None:
    from stockgate.alerts import raise_alert

    named = ", ".join(f"SKU-{i:04d}-BLUE-XL x 1" for i in range(40))  # a 40-line order
    detail = (f"order 1001 refunded (7): the channel does not say which units came back, "
              f"nothing was restocked; review: {named}")
    await raise_alert(redis, "acme", "refund_needs_review", detail, channel="woo", ref="1001")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web_app),
                                 base_url="https://console.test") as c:
        assert (await c.post("/console/session", json={"key": OPERATOR})).status_code == 200
        shown = (await c.get("/console/api/overview")).json()["alerts"][0]["detail"]
    assert shown == detail, f"{len(shown)} of {len(detail)} characters shown"


@pytest.fixture
async def web_app(app: Starlette) -> Starlette:
    return app


# ---- H. a short credential part blanks ordinary words ----------------------------------------

def test_scrub_leaves_words_that_merely_contain_a_short_userinfo_part() -> None:
    from stockgate.activity import scrub

    channel = Channel(kind="standard", secret="whsec-unused-0123", tenant="acme",
                      api_url="https://shop:Zq8-long-password-77@legacy.example.com/api")
    text = "shop: HTTP 404 no item SKU 'workshop-apron' at /api/shop-items"
    assert scrub(text, channel) == text


# ---- sanity (expected to pass): console_insecure_cookie -------------------------------------

async def test_insecure_cookie_setting_drops_secure_on_sign_in_and_sign_out(
        gw_settings: Any, redis: Redis) -> None:
    settings = msgspec.structs.replace(gw_settings, console_insecure_cookie=True)
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://lab-gateway.internal:8000") as c:
        r = await c.post("/console/session", json={"key": OPERATOR})
        assert r.status_code == 200
        assert "secure" not in r.headers["set-cookie"].lower()
        csrf = r.json()["csrf"]
        assert (await c.get("/console/api/overview")).status_code == 200  # jar sends it
        r = await c.delete("/console/session", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 204 and "secure" not in r.headers["set-cookie"].lower()


# ---- sanity (expected to pass): /v1/events blank filters as before the console ---------------

async def test_v1_events_blank_filters_unchanged(app: Starlette, client: httpx.AsyncClient
                                                 ) -> None:
    from stockgate.models import Event, EventSource

    await app.state.audit.write([Event(
        ts=int(time.time() * 1000), tenant="acme", type="adjust", sku="EV-1",
        location="main", delta={"on_hand": 3}, source=EventSource(), id="1-0")])
    h = bearer(OPERATOR)
    assert (await client.get("/v1/events", params={"type": ""}, headers=h)).status_code == 400
    assert (await client.get("/v1/events", params={"sku": ""}, headers=h)).json()["events"] == []
    api_channel = (await client.get("/v1/events", params={"channel": ""}, headers=h)).json()
    assert api_channel["events"]  # an empty channel: changes made through the API
    assert (await client.get("/v1/events", params={"since": str(2**63 - 1)},
                             headers=h)).status_code == 200
    assert (await client.get("/v1/events", params={"since": str(2**63)},
                             headers=h)).status_code == 400
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test") as c:
        assert (await c.post("/console/session", json={"key": OPERATOR})).status_code == 200
        r = await c.get("/console/api/events", params={"sku": "", "type": "", "channel": ""})
        assert r.status_code == 200 and r.json()["events"]


# ---- I. credentials in api_url go out as Basic auth, and come back unscrubbed ----------------

_Echo = echoing(lambda auth: f"denied; request had Authorization: {auth}")


async def test_api_url_credentials_echoed_as_basic_auth_are_scrubbed(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    import base64

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    userinfo = "inventory-bot:Zq8-long-password-77"
    try:
        # scrub() treats api_url's userinfo as a credential; httpx sends it as Basic auth.
        channel = Channel(kind="standard", secret="whsec-unused-0123",
                          api_url=f"http://{userinfo}@127.0.0.1:{server.server_address[1]}",
                          rate_limit_per_s=200.0, tenant="default")
        settings = settings_with(tmp_path, {"std": channel})
        async with running_worker(settings, redis_server.url):
            application = create_app(settings, redis)
            async with application.router.lifespan_context(application):
                await application.state.engine.adjust("default", "SKU-S", reason="receipt",
                                                      idempotency_key="s1", delta=3)

                async def parked() -> bool:
                    return bool(await failed_deliveries(redis, "default"))
                await wait_for(parked, 20)
    finally:
        server.shutdown()
    stored = (await failed_deliveries(redis, "default"))[0].last_error
    basic = base64.b64encode(userinfo.encode()).decode()
    assert "Basic" in stored  # the echo came back ...
    assert basic not in stored, f"... with the api_url's credentials in base64: {stored!r}"
