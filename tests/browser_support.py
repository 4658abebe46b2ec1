"""Harness for the browser tests (the operator console at /console): a headless Chromium driven
by Playwright's async API, an ASGI app under a real uvicorn in the test's event loop, and a
directory for screenshots.

The browser is the system's (Debian's `chromium`, which `make test` installs when run as
root), never one Playwright downloads: `playwright install` fetches from a CDN that CI cannot
reach. Without a browser the tests skip with the reason, except in CI (CI set), where they
fail: there a missing browser means the browser tests silently stopped running.

    async def test_console_signs_in(gateway_app):
        require_browser()
        async with serve_app(gateway_app) as base, launch_chromium() as browser:
            page = await browser.new_page()
            errors = collect_errors(page)
            await page.goto(base + "/console")
            ...
            await screenshot(page, "signed-in")
            assert errors == []
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page
    from starlette.types import ASGIApp

    from stockgate.settings import Settings

# Names a Chromium goes by on PATH, in the order looked for: Debian's, Ubuntu's, Google's.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Names a browser explicitly (a path, or a name on PATH); it then wins over the PATH lookup.
BROWSER_VAR = "CHROMIUM"
REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"


def in_ci() -> bool:
    """CI set to anything but empty/0/false, as tests/test_power_loss.py reads it."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def browser_path() -> str | None:
    """The Chromium executable to drive: $CHROMIUM if set (a path or a name on PATH; one that
    does not resolve gives None rather than a fallback, so CHROMIUM=/nonexistent simulates a
    machine without a browser), else the first of BROWSER_NAMES on PATH."""
    chosen = os.environ.get(BROWSER_VAR)
    if chosen:
        return shutil.which(chosen)
    for name in BROWSER_NAMES:
        if found := shutil.which(name):
            return found
    return None


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    if browser_path() is None:
        where = (f"{BROWSER_VAR}={os.environ[BROWSER_VAR]} is not an executable"
                 if os.environ.get(BROWSER_VAR) else
                 f"none of {', '.join(BROWSER_NAMES)} is on PATH")
        return (f"no Chromium for the browser tests: {where} (apt-get install chromium, which "
                f"`make test` does when run as root, or set {BROWSER_VAR})")
    return None


def require_browser() -> str:
    """The browser's path; skips the test when there is none, fails it in CI instead (there
    `make test` installs one, so a missing browser is a broken setup, not a choice)."""
    reason = missing_browser_reason()
    if reason is None:
        path = browser_path()
        assert path is not None
        return path
    if in_ci():
        pytest.fail(f"the browser tests must run in CI, but: {reason}")
    pytest.skip(reason)


def launch_args() -> list[str]:
    """Chromium's sandbox needs user namespaces it refuses to set up as root (CI runs as
    root): there it would exit at once, so root runs without it."""
    return ["--no-sandbox"] if os.geteuid() == 0 else []


@asynccontextmanager
async def launch_chromium(*, args: Sequence[str] = (), **options: Any
                          ) -> AsyncIterator[Browser]:
    """A headless Chromium (require_browser()'s) driven by Playwright, closed on the way out.
    `args` are added to launch_args(); `options` go to `chromium.launch` (e.g. slow_mo)."""
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=[*launch_args(), *args], **options)
        try:
            yield browser
        finally:
            await browser.close()


def artifact_dir() -> Path:
    """test-artifacts/console/ under the repo root (ignored by git), created: screenshots of
    the browser tests, for a person to look at after a run (CI keeps the work tree)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """A PNG of the page as artifact_dir()/<name>.png; returns its path."""
    path = artifact_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


def collect_errors(page: Page) -> list[str]:
    """A list that fills with the page's console errors and uncaught exceptions from now on.
    The console's strict CSP reports what it blocks (an inline script or style) as a console
    error, so `assert errors == []` at the end of a test also checks the CSP held."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


@asynccontextmanager
async def serve_app(app: ASGIApp, settings: Settings | None = None, *, lifespan: bool = False,
                    shutdown_timeout_s: float = 2.0) -> AsyncIterator[str]:
    """`app` under a real uvicorn in the current event loop on a free 127.0.0.1 port;
    yields the base URL ("http://127.0.0.1:<port>", no trailing slash).

    The port is bound here and the socket handed to uvicorn, so no other process can take it
    between a check and the bind. With `settings`, the production options
    (gateway.server.uvicorn_options: connection limits, keep-alive). The app's lifespan is
    the caller's by default (the gateway tests' `app` fixture already runs it); lifespan=True
    lets uvicorn run it. Shutdown waits at most `shutdown_timeout_s` for open requests: a
    page's event stream (/console/api/live) never ends on its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if settings is not None:
        from gateway.server import uvicorn_options

        options = uvicorn_options(settings, "127.0.0.1", port)
    options.update(lifespan="on" if lifespan else "off", log_level="warning",
                   access_log=False, timeout_graceful_shutdown=shutdown_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn exited before it started (lifespan failed?)")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=shutdown_timeout_s + 10)
        finally:
            sock.close()
