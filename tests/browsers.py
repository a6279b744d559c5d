"""Headless Chromium for the browser tests (tests/test_browser.py, tests/test_shop.py):
Debian's /usr/bin/chromium driven by Playwright, never a downloaded browser. The
``browser`` fixture reaches every test through ``pytest_plugins`` in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
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
