"""The browser harness end to end (tests/browser_support.py): a tiny Starlette page served by
uvicorn in the test's loop, rendered by the system's headless Chromium through Playwright, and
a screenshot of it written. Skips without a browser, fails in CI without one."""

from __future__ import annotations

from browser_support import (
    artifact_dir,
    collect_errors,
    launch_chromium,
    require_browser,
    screenshot,
    serve_app,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

# The page's text is set by its script (served from /app.js under a CSP like the console's):
# seeing it proves the browser ran an ES module, not only parsed HTML.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title>
<script type="module" src="/app.js"></script></head>
<body><h1 id="title">Stockgate</h1><p id="status">loading</p></body></html>"""
SCRIPT = 'document.getElementById("status").textContent = "rendered by " + navigator.userAgent;'
CSP = "default-src 'none'; script-src 'self'"


async def _page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP})


async def _script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript")


def smoke_app() -> Starlette:
    return Starlette(routes=[Route("/", _page), Route("/app.js", _script)])


async def test_the_browser_renders_a_served_page_and_a_screenshot_is_written() -> None:
    require_browser()
    target = artifact_dir() / "smoke.png"
    target.unlink(missing_ok=True)
    async with serve_app(smoke_app()) as base, launch_chromium() as browser:
        page = await browser.new_page()
        errors = collect_errors(page)
        response = await page.goto(base + "/")
        assert response is not None and response.status == 200
        await page.wait_for_function(
            'document.getElementById("status").textContent !== "loading"', timeout=10_000)
        assert await page.text_content("#title") == "Stockgate"
        assert "Chrome/" in (await page.text_content("#status") or "")
        path = await screenshot(page, "smoke")
        assert errors == []
    assert path == target
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
