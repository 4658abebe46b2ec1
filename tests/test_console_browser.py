"""The console in headless Chromium against the whole system: the gateway under uvicorn, a
real arq worker, a channel simulator, the test server. Screenshots of each view are written
to test-artifacts/console/. Skips without a browser, except in CI (`make test` installs
Debian's chromium there)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_support import collect_errors, launch_chromium, require_browser, screenshot, serve_app
from playwright.async_api import Browser, Locator, Page
from redis.asyncio import Redis
from workers_helpers import (
    OPERATOR_KEY,
    channel_for,
    running_worker,
    settings_with,
    wait_for,
)

from gateway.app import create_app
from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings
from workers.simulators import SimulatorServer

OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}


class Console:
    def __init__(self, base: str, api: httpx.AsyncClient, browser: Browser,
                 sim: SimulatorServer, settings: Settings) -> None:
        self.base, self.api, self.browser, self.sim = base, api, browser, sim
        self.settings = settings

    async def adjust(self, sku: str, delta: int, key: str) -> dict[str, Any]:
        r = await self.api.post(f"/v1/stock/{sku}/adjust", headers=OP, json={
            "delta": delta, "reason": "test", "idempotency_key": key})
        assert r.status_code == 200, r.text
        return r.json()

    async def signed_in(self) -> Page:
        page = await self.browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(self.base + "/console/")
        await page.fill("#key", OPERATOR_KEY)
        await page.click("#signin-submit")
        await page.wait_for_selector('#view-overview[data-loaded="1"]')
        return page


@pytest.fixture
async def console(redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
                  sim_factory: Callable[[str], SimulatorServer]) -> AsyncIterator[Console]:
    require_browser()
    sim = sim_factory("woocommerce")
    settings = settings_with(tmp_path, {"woo": channel_for("woocommerce", sim)})
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), serve_app(app, settings) as base, \
            running_worker(settings, redis_server.url), launch_chromium() as browser, \
            httpx.AsyncClient(base_url=base) as api:
        yield Console(base, api, browser, sim, settings)


async def number(page: Page, selector: str) -> int:
    return int("".join(ch for ch in await page.text_content(selector) or "" if ch.isdigit()))


async def shows(page: Page, selector: str, value: int, timeout_s: float) -> None:
    """Until the element at `selector` shows `value`. Polled from here: Playwright's
    wait_for_function evaluates a string in the page, which the console's CSP refuses."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await page.locator(selector).count() and await number(page, selector)
        if found == value:
            return
        assert time.monotonic() < deadline, f"{selector} shows {found}, not {value}"
        await asyncio.sleep(0.02)


async def _all_name(rows: Locator, text: str) -> bool:
    found = await rows.all_text_contents()
    return bool(found) and all(text in row for row in found)


async def test_an_operator_signs_in_and_the_overview_follows_stock_within_two_seconds(
        console: Console) -> None:
    await console.adjust("TEE-1", 10, "seed-1")
    page = await console.browser.new_page(viewport={"width": 1280, "height": 800})
    errors = collect_errors(page)
    await page.goto(console.base + "/console/")
    await page.fill("#key", OPERATOR_KEY + "-wrong")
    await page.click("#signin-submit")
    await page.wait_for_selector("#signin-error:not(:empty)")
    await page.fill("#key", OPERATOR_KEY)
    await page.click("#signin-submit")
    await page.wait_for_selector('#view-overview[data-loaded="1"]')
    # The key stays nowhere in the page: not in the field, the DOM, storage or a cookie the
    # page can read.
    assert await page.input_value("#key") == ""
    assert OPERATOR_KEY not in await page.content()
    kept = await page.evaluate(
        "JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie")
    assert kept == "{}{}"
    assert await number(page, "#units-on-sale") == 10
    started = time.monotonic()
    await console.adjust("TEE-1", 5, "seed-2")
    await shows(page, "#units-on-sale", 15, 2.0)
    took = time.monotonic() - started
    print(f"overview showed the change {took * 1000:.0f} ms after the API call")
    await page.wait_for_selector('#channels-table tr[data-channel="woo"][data-state="in_sync"]',
                                 timeout=10_000)
    await screenshot(page, "overview")
    # 401 of the first session check, before signing in, is the only error expected.
    assert [e for e in errors if "401" not in e] == []


async def test_stock_events_and_live_views_render_what_the_api_did(console: Console) -> None:
    await console.adjust("MUG-1", 8, "seed-mug")
    r = await console.api.post("/v1/holds", headers=OP, json={"lines": [{"sku": "MUG-1",
                                                                         "qty": 2}]})
    hold = r.json()["hold_id"]
    r = await console.api.post(f"/v1/holds/{hold}/commit", headers=OP,
                               json={"order_id": "ORDER-42"})
    assert r.status_code == 200, r.text

    async def audited() -> bool:
        r = await console.api.get("/v1/events", headers=OP, params={"ref": "ORDER-42"})
        return r.status_code == 200 and bool(r.json()["events"])

    await wait_for(audited, 10)
    page = await console.signed_in()
    errors = collect_errors(page)

    await page.click('a[data-view="stock"]')
    await page.fill("#sku-search", "mug")
    await page.click('tr[data-sku="MUG-1"]')
    await page.wait_for_selector('#sku-detail[data-loaded="1"]')
    assert await number(page, 'td[data-location="main"][data-field="available"]') == 6
    await page.fill('#adjust-form [name="delta"]', "3")
    await page.fill('#adjust-form [name="reason"]', "cycle count")
    await page.click("#adjust-submit")
    await shows(page, 'td[data-location="main"][data-field="available"]', 9, 5.0)
    await screenshot(page, "stock")

    await page.goto(console.base + "/console/#/events")
    await page.wait_for_selector('#view-events[data-loaded="1"]')
    await page.fill('#event-filters [name="ref"]', "ORDER-42")
    await page.click("#events-apply")
    rows = page.locator("#events-table tr[data-event-id]")
    await wait_for(lambda: _all_name(rows, "ORDER-42"), 5)
    rows = await rows.count()
    api = (await console.api.get("/v1/events", headers=OP, params={"ref": "ORDER-42"})).json()
    assert rows == len(api["events"]) == 1
    assert "commit" in await page.text_content("#events-table")
    await screenshot(page, "events")

    await page.click('a[data-view="live"]')
    await page.wait_for_selector('#view-live[data-loaded="1"]')
    for n in range(3):
        await console.api.post("/v1/holds", headers=OP, json={"lines": [{"sku": "MUG-1",
                                                                         "qty": 1}]})
        await console.adjust("MUG-1", 1, f"live-{n}")
    await page.wait_for_selector('[data-hot-sku="MUG-1"]', timeout=5000)
    await screenshot(page, "live")

    await page.click('a[data-view="channels"]')
    await page.wait_for_selector('#view-channels[data-loaded="1"]')
    await screenshot(page, "channels")
    assert errors == []


async def test_a_failing_channel_shows_failing_and_its_retry_turns_it_green(
        console: Console) -> None:
    console.sim.state.fail_ratio = 1.0  # every push answers 500
    await console.adjust("CAP-1", 4, "seed-cap")
    page = await console.signed_in()
    errors = collect_errors(page)
    await page.click('a[data-view="channels"]')
    failing = '#view-channels tr[data-channel="woo"][data-state="failing"]'
    await page.wait_for_selector(failing, timeout=15_000)
    await page.wait_for_selector("#view-channels tr[data-delivery] button.retry")
    await screenshot(page, "channels-failing")
    assert console.sim.state.count("CAP-1") is None  # nothing reached the channel
    console.sim.state.fail_ratio = 0.0  # the channel is back
    await page.click("#view-channels tr[data-delivery] button.retry")
    await page.wait_for_selector('#view-channels tr[data-channel="woo"][data-state="in_sync"]',
                                 timeout=10_000)
    await page.wait_for_selector("#view-channels tr[data-delivery]", state="detached")
    await screenshot(page, "channels-recovered")
    assert console.sim.state.count("CAP-1") == 4  # the retried push carried the value
    assert errors == []


async def test_the_page_cannot_change_anything_without_its_session_and_token(
        console: Console) -> None:
    await console.adjust("KEY-1", 5, "seed-key")
    page = await console.signed_in()
    cookies = await page.context.cookies()
    (cookie,) = [c for c in cookies if c["name"] == "sg_console"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console" and cookie["expires"] > time.time()
    call = """async ([url, token]) => {
        const headers = {"Content-Type": "application/json"};
        if (token !== null) headers["X-CSRF-Token"] = token;
        const r = await fetch(url, {method: "POST", headers, body: JSON.stringify(
            {delta: -5, reason: "x", idempotency_key: crypto.randomUUID()})});
        return r.status;
    }"""
    url = console.base + "/console/api/stock/KEY-1/adjust"
    assert await page.evaluate(call, [url, None]) == 403
    assert await page.evaluate(call, [url, "forged-token"]) == 403
    stranger = await console.browser.new_page()
    await stranger.goto(console.base + "/console/")
    status = await stranger.evaluate(
        "async (u) => (await fetch(u)).status", console.base + "/console/api/overview")
    assert status == 401
    assert await stranger.evaluate(call, [url, None]) == 401
    r = await console.api.get("/v1/stock/KEY-1", headers=OP)
    assert r.json()["locations"]["main"]["on_hand"] == 5  # nothing refused changed stock
