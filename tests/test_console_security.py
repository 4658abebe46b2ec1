"""The console's sign-in, session cookie, CSRF, Content-Security-Policy and tenant walls,
through the real app on the test server (the browser tests in test_console_browser.py drive
the same routes from Chromium)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, OTHER_TENANT, STOREFRONT, receive
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway import console_session
from gateway.app import create_app
from gateway.console import CSP
from stockgate.settings import ApiKey, Settings

pytest_plugins = ["gateway_fixtures"]

SECRETS = (OPERATOR, OTHER_TENANT, STOREFRONT)
API_GETS = ["/console/api/overview", "/console/api/stock", "/console/api/stock/SKU-1",
            "/console/api/channels", "/console/api/events", "/console/api/live"]


@pytest.fixture
async def web(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client: https (the cookie is Secure), its own cookie jar."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test") as c:
        yield c


async def sign_in(c: httpx.AsyncClient, key: str = OPERATOR) -> dict:
    r = await c.post("/console/session", json={"key": key})
    assert r.status_code == 200, r.text
    return r.json()


def csrf(session: dict) -> dict[str, str]:
    return {"X-CSRF-Token": session["csrf"]}


async def test_sign_in_sets_a_hardened_cookie_and_never_returns_the_key(
        web: httpx.AsyncClient) -> None:
    r = await web.post("/console/session", json={"key": OPERATOR})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= flags
    assert "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Max-Age=28800" in cookie
    body = r.json()
    assert body["tenant"] == "acme" and body["key_name"] == "op" and body["csrf"]
    assert OPERATOR not in r.text and OPERATOR not in cookie
    # The token is signed, not encrypted: it must not carry the secret in any encoding.
    assert OPERATOR.encode() not in console_session._unb64(
        cookie.split("=", 1)[1].split(";")[0].split(".")[0])
    who = await web.get("/console/session")
    assert who.status_code == 200 and who.json()["tenant"] == "acme"


async def test_wrong_and_storefront_keys_are_refused_and_guessing_is_throttled(
        web: httpx.AsyncClient) -> None:
    r = await web.post("/console/session", json={"key": OPERATOR + "x"})
    assert r.status_code == 401 and "set-cookie" not in r.headers
    r = await web.post("/console/session", json={"key": STOREFRONT})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = await web.post("/console/session", content=b"key=" + OPERATOR.encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415  # a cross-site form cannot post JSON
    statuses = [(await web.post("/console/session", json={"key": f"guess-{i}"})).status_code
                for i in range(12)]
    assert statuses[:8] == [401] * 8 and statuses[-1] == 429
    # Locked out, even the right key waits: the lock is on the address, not the guess.
    assert (await web.post("/console/session", json={"key": OPERATOR})).status_code == 429


async def test_every_api_route_needs_a_valid_session(web: httpx.AsyncClient) -> None:
    for path in API_GETS:
        r = await web.get(path)
        assert r.status_code == 401, path
    session = await sign_in(web)
    good = web.cookies[console_session.COOKIE]
    body, mac = good.split(".")
    forged_body = console_session._b64(msgspec.msgpack.encode(
        console_session.Token(key="op", tenant="globex", sid="x", exp_ms=2**62)))
    for bad in (body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),
                forged_body + "." + mac, "garbage", good + "x"):
        web.cookies.clear()
        web.cookies.set(console_session.COOKIE, bad, domain="console.test", path="/console")
        r = await web.get("/console/api/overview")
        assert r.status_code == 401, bad
    web.cookies.clear()
    web.cookies.set(console_session.COOKIE, good, domain="console.test", path="/console")
    assert (await web.get("/console/api/overview")).status_code == 200
    assert session["expires_at_ms"] > 0


async def test_expired_rotated_and_signed_out_sessions_end(
        gw_settings: Settings, redis: Redis, web: httpx.AsyncClient) -> None:
    await sign_in(web)
    value = web.cookies[console_session.COOKIE]
    # Rotated key: the same cookie against a gateway whose operator key changed.
    rotated = msgspec.structs.replace(gw_settings, api_keys={
        **gw_settings.api_keys, "op": ApiKey(secret="op-rotated-0123456789", tenant="acme",
                                             scopes=("operator",))})
    assert console_session.read(rotated, value) is None
    # The key moved to another tenant in the config: its old cookies named the old one.
    moved = msgspec.structs.replace(gw_settings, api_keys={
        **gw_settings.api_keys, "op": ApiKey(secret=OPERATOR, tenant="globex",
                                             scopes=("operator",))})
    assert console_session.read(moved, value) is None
    assert console_session.read(gw_settings, value) is not None
    expired = msgspec.structs.replace(gw_settings, console_session_ttl_s=-1)
    stale, _ = console_session.issue(expired, "op")
    assert console_session.read(gw_settings, stale) is None
    # Signed out: the copied cookie is dead too, not only the browser's.
    who = (await web.get("/console/session")).json()
    r = await web.delete("/console/session", headers=csrf(who))
    assert r.status_code == 204 and "Max-Age=0" in r.headers["set-cookie"]
    web.cookies.set(console_session.COOKIE, value, domain="console.test", path="/console")
    assert (await web.get("/console/api/overview")).status_code == 401


async def test_state_changes_need_the_csrf_token_and_the_same_origin(
        web: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    session = await sign_in(web)
    adjust = {"delta": 1, "reason": "count", "idempotency_key": "console-adj-1"}
    r = await web.post("/console/api/stock/SKU-1/adjust", json=adjust)
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = await web.post("/console/api/stock/SKU-1/adjust", json=adjust,
                       headers={"X-CSRF-Token": session["csrf"][:-1] + "x"})
    assert r.status_code == 403
    r = await web.post("/console/api/stock/SKU-1/adjust", json=adjust,
                       headers={**csrf(session), "Origin": "https://evil.example"})
    assert r.status_code == 403
    r = await web.post("/console/api/deliveries/abc/retry")
    assert r.status_code == 403
    assert (await web.delete("/console/session")).status_code == 403
    # Nothing of the refused calls changed stock.
    view = (await web.get("/console/api/stock/SKU-1")).json()["view"]
    assert view["locations"]["main"]["on_hand"] == 10
    r = await web.post("/console/api/stock/SKU-1/adjust", json=adjust,
                       headers={**csrf(session), "Origin": "https://console.test"})
    assert r.status_code == 200, r.text
    assert r.json()["after"]["on_hand"] == 11
    # Another session's token is not this one's.
    async with httpx.AsyncClient(transport=web._transport, base_url="https://console.test") as b:
        other = await sign_in(b)
    r = await web.post("/console/api/stock/SKU-1/adjust",
                       json={**adjust, "idempotency_key": "console-adj-2"}, headers=csrf(other))
    assert r.status_code == 403


async def test_every_console_response_carries_the_policy(web: httpx.AsyncClient) -> None:
    session = await sign_in(web)
    replies = [await web.get("/console/"), await web.get("/console/static/app.js"),
               await web.get("/console/static/nope.js"), await web.get("/console/api/overview"),
               await web.get("/console/api/nope"),
               await web.post("/console/api/stock/SKU-1/adjust", json={}),
               await web.post("/console/api/stock/SKU-1/adjust", json={},
                              headers=csrf(session)),
               await web.delete("/console/api/overview", headers=csrf(session)),
               await web.put("/console/session", headers=csrf(session))]
    assert [r.status_code for r in replies] == [200, 200, 404, 200, 404, 403, 400, 405, 405]
    # A 405 names what the route takes, in one order whatever the hash seed.
    assert replies[-2].headers["allow"] == "GET, HEAD"
    assert replies[-1].headers["allow"] == "DELETE, GET, HEAD, POST"
    for r in replies:
        assert r.headers["content-security-policy"] == CSP, r.url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP and "default-src 'none'" in CSP
    assert replies[0].headers["content-type"].startswith("text/html")
    assert replies[1].headers["content-type"].startswith("text/javascript")
    # The page itself has no inline script or style for the policy to refuse.
    html = replies[0].text
    assert "<script>" not in html and "style=" not in html
    assert (await web.get("/console/static/../app.py")).status_code == 404


async def test_a_session_reads_only_its_own_tenant(
        web: httpx.AsyncClient, client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "ACME-ONLY", 7)
    await sign_in(web, OTHER_TENANT)  # globex's operator
    assert (await web.get("/console/api/stock/ACME-ONLY")).status_code == 404
    listed = (await web.get("/console/api/stock", params={"q": "ACME"})).json()
    assert listed == {"skus": [], "total": 0}
    overview = (await web.get("/console/api/overview", params={"tenant": "acme"})).json()
    assert overview["tenant"] == "globex" and overview["units_on_sale"] == 0
    assert overview["channels"] == []  # acme's channels are not globex's
    events = (await web.get("/console/api/events",
                            params={"sku": "ACME-ONLY", "tenant": "acme"})).json()
    assert events["events"] == []
    r = await web.post("/console/api/stock/ACME-ONLY/adjust",
                       json={"delta": -7, "reason": "x", "idempotency_key": "cross-1"},
                       headers=csrf((await web.get("/console/session")).json()))
    assert r.status_code == 422, r.text  # globex has no units to take; acme's untouched
    async with httpx.AsyncClient(transport=web._transport, base_url="https://console.test") as a:
        await sign_in(a)
        acme = (await a.get("/console/api/stock/ACME-ONLY")).json()
    assert acme["view"]["locations"]["main"]["on_hand"] == 7


async def test_no_key_reaches_a_response_or_the_log(
        gw_settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    application = create_app(gw_settings, redis)
    seen: list[str] = []
    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="https://console.test") as web:
        api = httpx.AsyncClient(transport=web._transport, base_url="https://console.test")
        await receive(api, "SKU-LOG", 3)
        for key in (OPERATOR + "-wrong", STOREFRONT, OPERATOR):
            r = await web.post("/console/session", json={"key": key})
            seen += [r.text, str(r.headers)]
        session = (await web.get("/console/session")).json()
        for path in [*API_GETS[:-1], "/console/", "/console/api/stock/SKU-LOG"]:
            r = await web.get(path)
            seen += [r.text, str(r.headers)]
        r = await web.post("/console/api/stock/SKU-LOG/adjust", headers=csrf(session),
                           json={"delta": 1, "reason": "r", "idempotency_key": "log-1"})
        seen += [r.text, str(r.headers)]
        r = await web.delete("/console/session", headers=csrf(session))
        seen += [r.text, str(r.headers)]
        await api.aclose()
    text = "\n".join(seen) + caplog.text
    assert "console sign-in: key op" in caplog.text  # the log says who, by the key's name
    for secret in SECRETS:
        assert secret not in text
        assert secret[:12] not in text
