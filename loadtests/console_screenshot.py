"""The README's console screenshot, taken during a flash-sale demo:
`python -m loadtests.console_screenshot [--out docs/console-overview.png]`.

Runs `stockgate demo`, reads the console URL and key it prints at start, waits until the
shoppers are buying, signs in with headless Chromium (Debian's, as in the browser tests) and
photographs the overview and the live view mid-sale.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from playwright.async_api import async_playwright

CONSOLE_LINE = re.compile(r"^Console: (\S+)\s+\(sign in with key demo-operator: (\S+)\)$")


async def photograph(url: str, key: str, out: Path, browser_path: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=browser_path,
                                           args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(url + "/")
        await page.fill("#key", key)
        await page.click("#signin-submit")
        await page.wait_for_selector('#view-overview[data-loaded="1"]')
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the sale shows on the page
            text = await page.text_content("#holds-last-minute") or "0"
            if int(re.sub(r"\D", "", text) or 0) > 500:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # a few more steps of the charts
        await page.screenshot(path=str(out), full_page=True)
        await page.click('a[data-view="live"]')
        await page.wait_for_selector("[data-hot-sku]", timeout=10_000)
        await asyncio.sleep(2)
        await page.screenshot(path=str(out.with_name(out.stem + "-live.png")), full_page=True)
        await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/console-overview.png")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args()
    demo = subprocess.Popen([sys.executable, "-m", "stockgate.cli", "demo", "--duration",
                             str(args.duration)], stdout=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    for line in demo.stdout:
        print(line, end="")
        if found := CONSOLE_LINE.match(line.strip()):
            asyncio.run(photograph(found[1], found[2], Path(args.out), args.browser))
            print(f"wrote {args.out}", flush=True)
            break
    for line in demo.stdout:
        print(line, end="")
    return demo.wait()


if __name__ == "__main__":
    raise SystemExit(main())
