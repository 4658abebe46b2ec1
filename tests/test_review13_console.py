"""Review of the operator console (issue 13): each test reproduces one finding and FAILS on
5e074fa; it passes once the finding is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from echo_support import echoing
from gateway_support import OPERATOR, STOREFRONT, bearer, receive, wait_until_serving
from redis.asyncio import Redis
from starlette.applications import Starlette
from workers_helpers import OPERATOR_KEY, running_worker, settings_with, wait_for

from gateway import console
from gateway.app import create_app
from gateway.console_session import COOKIE, SignInGuard
from gateway.errors import RateLimited
from stockgate.alerts import list_alerts
from stockgate.deliveries import failed_deliveries
from stockgate.embedded import EmbeddedRedis, free_port
from stockgate.settings import Channel

pytest_plugins = ["gateway_fixtures"]

T = "default"


@pytest.fixture
async def web(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test") as c:
        r = await c.post("/console/session", json={"key": OPERATOR})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf"]
        yield c


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]],
           client: str = "203.0.113.9") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "scheme": "https", "http_version": "1.1",
            "server": ("console.test", 443), "client": (client, 40000),
            "headers": [(b"host", b"console.test"), *headers]}


# ---- 1. session cookie without Secure behind the TLS proxy the deployment needs ----------

async def test_cookie_is_secure_behind_a_tls_terminating_proxy(app: Starlette) -> None:
    # `stockgate serve` runs uvicorn with proxy_headers=False: behind the TLS front end the
    # gateway sees plain http and a public host name, whatever X-Forwarded-Proto says.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://stock.example.com") as c:
        r = await c.post("/console/session", json={"key": OPERATOR},
                         headers={"X-Forwarded-Proto": "https",
                                  "Origin": "https://stock.example.com"})
    assert r.status_code == 200, r.text
    assert "secure" in r.headers["set-cookie"].lower(), r.headers["set-cookie"]


# ---- 2-4. the per-address sign-in guard -----------------------------------------------------

async def test_sign_in_guard_counts_guesses_whose_bodies_arrive_late(app: Starlette) -> None:
    """guard.check() runs before the body is read and guard.failed() after: every request
    whose headers arrived before the first failure was recorded passes the check."""
    go = asyncio.Event()
    statuses: list[int] = []

    async def guess(i: int) -> None:
        body = json.dumps({"key": f"guess-{i}"}).encode()
        sent = False

        async def receive_() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                await go.wait()  # a client that sends its headers now, its body later
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(_scope("POST", "/console/session",
                         [(b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode())]), receive_, send)

    tasks = [asyncio.create_task(guess(i)) for i in range(200)]
    await asyncio.sleep(0.3)
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(statuses) == 200
    assert statuses.count(401) <= SignInGuard.limit, (
        f"{statuses.count(401)} keys tried from one address within the lock window")


def test_sign_in_guard_lock_survives_a_sweep_of_other_addresses() -> None:
    guard = SignInGuard()
    for _ in range(SignInGuard.limit):
        guard.failed("198.51.100.7")
    with pytest.raises(RateLimited):
        guard.check("198.51.100.7")
    # An IPv6 /64 holds 2**64 addresses: one failure from each of 10,001 of them ...
    for i in range(10_001):
        guard.failed(f"2001:db8::{i:x}")
    # ... and the locked address may guess again at once.
    with pytest.raises(RateLimited):
        guard.check("198.51.100.7")


async def test_guessers_behind_the_shared_proxy_do_not_lock_out_the_operator(
        app: Starlette, gw_settings: Any) -> None:
    """Behind a reverse proxy every client has the proxy's address: ten bad sign-ins from
    anyone would lock every operator out. With the proxy in `trusted_proxies`, `serve` has
    uvicorn read X-Forwarded-For (its middleware, as here), and the guard sees the client."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from gateway.server import uvicorn_options

    trusted = msgspec.structs.replace(gw_settings, trusted_proxies="127.0.0.1")
    options = uvicorn_options(trusted, "0.0.0.0", 8000)
    assert options["proxy_headers"] and options["forwarded_allow_ips"] == "127.0.0.1"
    assert not uvicorn_options(gw_settings, "0.0.0.0", 8000)["proxy_headers"]
    behind = ProxyHeadersMiddleware(app, trusted_hosts=options["forwarded_allow_ips"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=behind),
                                 base_url="https://console.test") as c:
        for i in range(SignInGuard.limit):
            r = await c.post("/console/session", json={"key": f"junk-{i}"},
                             headers={"X-Forwarded-For": "203.0.113.66"})
            assert r.status_code == 401
        r = await c.post("/console/session", json={"key": OPERATOR},
                         headers={"X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 200, r.text
        r = await c.post("/console/session", json={"key": OPERATOR},
                         headers={"X-Forwarded-For": "203.0.113.66"})
        assert r.status_code == 429  # the guesser's own address stays locked


# ---- 5. a live stream outlives its session ---------------------------------------------------

async def test_live_stream_ends_when_its_session_is_signed_out(
        web: httpx.AsyncClient, app: Starlette) -> None:
    cookie = f"{COOKIE}={web.cookies[COOKIE]}"
    ticks: list[float] = []
    signed_out_at: list[float] = []
    hang_up = asyncio.Event()

    async def receive_() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if b"event: tick" in message.get("body", b""):
            ticks.append(time.monotonic())
            if len(ticks) == 1:
                r = await web.delete("/console/session")  # this very cookie is signed out
                assert r.status_code == 204
                signed_out_at.append(time.monotonic())
                # The copied cookie is dead for every other route ...
                web.cookies.set(COOKIE, cookie.split("=", 1)[1], domain="console.test",
                                path="/console")
                assert (await web.get("/console/api/overview")).status_code == 401

    stream = asyncio.create_task(app(_scope("GET", "/console/api/live",
                                            [(b"cookie", cookie.encode())], "127.0.0.1"),
                                     receive_, send))
    await asyncio.wait({stream}, timeout=6)
    hang_up.set()
    await asyncio.wait_for(stream, 5)
    assert signed_out_at
    # ... but the stream keeps sending the tenant's live figures (for up to STREAM_MAX_S).
    after = [t for t in ticks if t > signed_out_at[0] + 1.5]
    assert not after, f"{len(after)} ticks sent after the sign-out"


# ---- 6. channel credentials in failed deliveries and alerts --------------------------------

TOKEN = "tok-LIVE-secret-0123456789"


_Echo = echoing(lambda auth: f"bad gateway; request had Authorization: {auth}")


async def test_channel_token_never_reaches_the_console(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        channel = Channel(kind="standard", secret="whsec-unused-0123",
                          api_url=f"http://127.0.0.1:{server.server_address[1]}",
                          access_token=TOKEN, rate_limit_per_s=200.0, tenant=T)
        settings = settings_with(tmp_path, {"std": channel})
        application = create_app(settings, redis)
        async with running_worker(settings, redis_server.url), \
                application.router.lifespan_context(application), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=application),
                    base_url="https://console.test") as web:
            await application.state.engine.adjust(T, "SKU-S", reason="receipt",
                                                  idempotency_key="s1", delta=3)

            async def parked() -> bool:
                return bool(await failed_deliveries(redis, T)) and bool(
                    await list_alerts(redis, T, type="delivery_failing"))
            await wait_for(parked, 20)
            r = await web.post("/console/session", json={"key": OPERATOR_KEY})
            assert r.status_code == 200, r.text
            channels = (await web.get("/console/api/channels")).text
            await asyncio.sleep(0.6)  # past the overview's shared half second
            overview = (await web.get("/console/api/overview")).text
    finally:
        server.shutdown()
    assert "[redacted]" in channels  # the scrubbed channel_sync.last_error
    leaks = [where for where, text in (("GET /console/api/channels", channels),
                                       ("GET /console/api/overview", overview),
                                       ("log", caplog.text)) if TOKEN in text]
    assert not leaks, f"the channel's access token is in: {leaks}"


# ---- 7. unbounded numbers in the events filters ---------------------------------------------

@pytest.mark.parametrize("params", [{"cursor": "99999999999999999999-0"},
                                    {"since": str(10**20)}, {"until": str(-10**20)}])
async def test_events_filters_out_of_range_are_a_400_not_a_500(
        web: httpx.AsyncClient, app: Starlette, params: dict[str, str]) -> None:
    ours = await web.get("/console/api/events", params=params)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(
            app=app, raise_app_exceptions=False), base_url="http://gw") as client:
        api = await client.get("/v1/events", params=params, headers=bearer(OPERATOR))
    assert (ours.status_code, api.status_code) == (400, 400), (ours.text, api.text)


# ---- 8. the live view's "available" of a hot SKU --------------------------------------------

async def test_live_hot_sku_available_counts_every_location(
        web: httpx.AsyncClient, client: httpx.AsyncClient, app: Starlette) -> None:
    await receive(client, "HOT2", 20, location="main")
    await receive(client, "HOT2", 30, location="eu")
    cookie = f"{COOKIE}={web.cookies[COOKIE]}"
    hot: list[dict[str, Any]] = []
    hang_up = asyncio.Event()
    sold = False

    async def receive_() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sold
        body = message.get("body", b"")
        if b"event: tick" not in body:
            return
        tick = json.loads(body.split(b"data: ", 1)[1])
        if not sold:
            sold = True
            r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
                "lines": [{"sku": "HOT2", "qty": 2, "location": "main"}]})
            assert r.status_code == 201, r.text
        elif tick["hot"]:
            hot.append(tick["hot"][0])
            hang_up.set()

    stream = asyncio.create_task(app(_scope("GET", "/console/api/live",
                                            [(b"cookie", cookie.encode())], "127.0.0.1"),
                                     receive_, send))
    await asyncio.wait({stream}, timeout=8)
    hang_up.set()
    await asyncio.wait_for(stream, 5)
    truth = (await client.get("/v1/stock/HOT2", headers=bearer(OPERATOR))).json()["available"]
    assert truth == 48
    assert hot and hot[0]["sku"] == "HOT2"
    assert hot[0]["available"] == truth, hot[0]


# ---- 9. per-stream memory --------------------------------------------------------------------

def test_live_hot_forgets_skus_that_left_the_window() -> None:
    hot = console._Hot()
    for n in range(50_000):
        hot.add(1000, f"SKU-{n}")
    assert len(hot.top(1000)) == console.HOT_SKUS
    assert hot.top(1000 + console.HOT_WINDOW_S + 1) == []
    assert not hot.seconds  # nothing of the window kept once it passed


# ---- 10. overview's low stock vs the low_stock alert -----------------------------------------

async def test_low_stock_count_agrees_with_the_low_stock_alert(
        web: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    # workers/outbox.py raises low_stock when available < threshold ("fell under").
    await receive(client, "AT-THRESHOLD", 5)
    r = await client.put("/v1/stock/AT-THRESHOLD/policy", headers=bearer(OPERATOR),
                         json={"low_stock_threshold": 5})
    assert r.status_code == 200, r.text
    overview = (await web.get("/console/api/overview")).json()
    row = (await web.get("/console/api/stock", params={"q": "AT-THRESHOLD"})).json()["skus"][0]
    assert (overview["low_stock"], row["low_stock"]) == (0, False)


# ---- 11. shutdown with a console open ----------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown_is_not_held_up_by_an_open_live_stream(tmp_path: Path, workers: int) -> None:
    """`stockgate serve` told to stop (SIGTERM, as a deploy does) with a console on the Live
    view: uvicorn tells the app only once every connection has closed, and the stream held
    each shutdown for its 10 s graceful limit. So did a stream whose request was in flight
    when the signal came (it registered after the open ones were ended): made certain here
    by freezing the gateway's Redis across the signal, so that the request waits in the
    gateway and registers only after."""
    store = EmbeddedRedis(tmp_path / "redis")
    store.start()
    assert store.process is not None
    config = tmp_path / "stockgate.toml"
    config.write_text('console_insecure_cookie = true\n'
                      f'[api_keys.op]\nsecret = "{OPERATOR}"\nscopes = ["operator"]\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "STOCKGATE_METRICS_DIR"}
    env.update(REDIS_URL=store.url, STOCKGATE_CONFIG=str(config),
               STOCKGATE_DATA_DIR=str(tmp_path), STOCKGATE_LOG_LEVEL="WARNING")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "stockgate.cli", "serve", "--port", str(port),
             "--workers", str(workers)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c, \
                httpx.Client(base_url=base, timeout=30) as late:
            wait_until_serving(serve, c, log_path)
            for client in (c, late):
                r = client.post("/console/session", json={"key": OPERATOR})
                assert r.status_code == 200, r.text

            def in_flight() -> None:
                with contextlib.suppress(httpx.HTTPError), \
                        late.stream("GET", "/console/api/live") as second:
                    for _ in second.iter_bytes():
                        pass

            with c.stream("GET", "/console/api/live") as stream:
                got = stream.iter_bytes()
                assert b"retry" in next(got)
                os.kill(store.process.pid, signal.SIGSTOP)
                try:
                    second = threading.Thread(target=in_flight)
                    second.start()
                    time.sleep(0.3)  # the request waits on Redis inside the gateway
                    serve.send_signal(signal.SIGTERM)
                    started = time.monotonic()
                    time.sleep(0.5)  # the stop has begun: listener closed, streams ended
                finally:
                    os.kill(store.process.pid, signal.SIGCONT)
                second.join(30)
                with contextlib.suppress(httpx.HTTPError, StopIteration):
                    for _ in got:
                        pass
            serve.wait(30)
        took = time.monotonic() - started
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        os.kill(store.process.pid, signal.SIGCONT)
        store.stop()
    # uvicorn's graceful limit is 10 s; the streams now end as the shutdown starts.
    assert took < 5, f"shutdown took {took:.1f} s with consoles on the Live view"
    # uvicorn raises the signal it caught again once it has shut down gracefully.
    assert serve.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "graceful shutdown exceeded" not in log_path.read_text()


# ---- 12. one tenant's key can take every live-stream slot of a process ------------------------

async def test_one_tenant_cannot_take_every_live_stream_slot(
        gw_settings: Any, redis: Redis) -> None:
    from gateway_support import OTHER_TENANT

    settings = msgspec.structs.replace(gw_settings, console_max_streams=4)
    application = create_app(settings, redis)
    hang_up = asyncio.Event()
    statuses: list[int] = []

    async def receive_() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    def sender(out: list[int]) -> Any:
        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out.append(message["status"])
        return send

    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="https://console.test") as c:
        streams = []
        for _ in range(4):  # globex signs in four times: four sessions, four streams
            r = await c.post("/console/session", json={"key": OTHER_TENANT})
            cookie = f"{COOKIE}={r.headers['set-cookie'].split(';')[0].split('=', 1)[1]}"
            streams.append(asyncio.create_task(application(
                _scope("GET", "/console/api/live", [(b"cookie", cookie.encode())], "127.0.0.1"),
                receive_, sender(statuses))))
        await asyncio.sleep(0.5)
        r = await c.post("/console/session", json={"key": OPERATOR})
        acme: list[int] = []
        cookie = f"{COOKIE}={r.headers['set-cookie'].split(';')[0].split('=', 1)[1]}"
        mine = asyncio.create_task(application(
            _scope("GET", "/console/api/live", [(b"cookie", cookie.encode())], "127.0.0.1"),
            receive_, sender(acme)))
        await asyncio.sleep(0.5)
        hang_up.set()
        await asyncio.wait_for(asyncio.gather(*streams, mine), 5)
    assert statuses == [200] * 4
    assert acme == [200], f"acme's only console refused with {acme}: globex holds every slot"


async def test_limit_with_a_unicode_digit_is_a_400(web: httpx.AsyncClient) -> None:
    r = await web.get("/console/api/stock", params={"limit": "\u00b2"})  # "²".isdigit()
    assert r.status_code == 400, (r.status_code, r.text)



# ---- 14. the cost of a search keystroke and an overview poll with a big catalogue ------------

async def test_search_keystrokes_do_not_reread_the_catalogue(
        web: httpx.AsyncClient, redis: Redis) -> None:
    """A search is asked for every 250 ms of typing: the tenant's SKU list (SMEMBERS of the
    whole catalogue) is read once for a burst of keystrokes, not once per keystroke."""
    from stockgate.keys import tenant_keys

    await redis.sadd(tenant_keys("acme").skus, *[f"SKU-{i:05d}" for i in range(20_000)])

    async def smembers_calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_smembers", {}).get("calls", 0))

    before = await smembers_calls()
    for typed in ("S", "SK", "SKU", "SKU-", "SKU-0", "SKU-00"):
        r = await web.get("/console/api/stock", params={"q": typed, "limit": 50})
        assert r.status_code == 200 and r.json()["total"] > 0
    assert await smembers_calls() - before == 1


# ---- 15. a non-ASCII X-CSRF-Token --------------------------------------------------------------

async def test_a_non_ascii_csrf_header_is_a_403_not_a_500(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(
            app=app, raise_app_exceptions=False), base_url="https://console.test") as c:
        r = await c.post("/console/session", json={"key": OPERATOR})
        assert r.status_code == 200
        r = await c.post("/console/api/deliveries/d1/retry",
                         headers={"X-CSRF-Token": "\u00e9".encode("latin-1")})
    assert r.status_code == 403, (r.status_code, r.text)


# ---- 16. every parked delivery in every channels poll ------------------------------------------

async def test_channels_reply_is_bounded_during_a_long_outage(
        web: httpx.AsyncClient, redis: Redis) -> None:
    from stockgate.deliveries import FailedDelivery, encode_failed
    from stockgate.keys import worker_keys

    failed = worker_keys("acme").failed
    for start in range(0, 50_000, 5_000):
        await redis.hset(failed, mapping={
            f"d{i}": encode_failed(FailedDelivery(
                id=f"d{i}", tenant="acme", channel="woo", sku=f"SKU-{i}", location="main",
                attempts=8, last_error="woo: HTTP 503 " + "x" * 150, failed_at=i))
            for i in range(start, start + 5_000)})
    r = await web.get("/console/api/channels")
    assert r.status_code == 200
    # The page asks for this every 2 s per open tab: the newest deliveries and the count.
    body = r.json()
    assert len(r.content) < 1_000_000, len(r.content)
    assert body["deliveries_total"] == 50_000 and body["deliveries"][0]["id"] == "d49999"
    assert next(c for c in body["channels"] if c["channel"] == "woo")["failed"] == 50_000
