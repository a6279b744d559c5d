"""Headless Chromium for the browser tests (tests/test_browser.py, tests/test_shop.py):
Debian's /usr/bin/chromium driven by Playwright, never a downloaded browser. The
``browser`` fixture reaches every test through ``pytest_plugins`` in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).resolve().parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    # A missing browser must fail the suite, never skip it: scripts/test installs it.
    assert Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


async def new_page(browser: Browser, **context: Any) -> Page:
    ctx = await browser.new_context(**context)
    return track_errors(await ctx.new_page())


def track_errors(page: Page) -> Page:
    """Collect the page's uncaught errors and dialogs in ``page.errors``."""
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def login(page: Page, port: int, user: str) -> None:
    await page.goto(f"http://127.0.0.1:{port}/login")
    await page.fill("#user", user)
    await page.click("button[type=submit]")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")


async def axe_violations(page: Page) -> list[str]:
    """Run axe-core (npm, injected; a page's CSP is bypassed by the test's context) on
    ``page``, shadow roots included: each violation as "rule: targets"."""
    assert AXE.exists(), "axe-core is not installed (scripts/test installs it with npm)"
    await page.add_script_tag(path=str(AXE))
    found = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))")
    return list(found)
