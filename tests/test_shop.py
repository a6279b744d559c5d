"""The seed's story with a real host application (examples/shop): two Herald nodes behind
real nginx (`herald cluster`'s LocalCluster), the shop as its own process with its own
schema and alembic history in the same PostgreSQL, and two browsers: a customer and the
shop's admin. The admin ships, the customer sees it live; a failure inside the shipping
transaction pushes nothing; a customer who was away sees it on return. The customer's
side is Herald's <herald-inbox> element in the shop's header (bell mode, the shop's
theme), on the shop's origin, talking to Herald's origin."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import asyncpg
import pytest
from playwright.async_api import Page, expect

from herald_dev.cluster import LocalCluster
from herald_dev.net import free_port
from tests.browsers import new_page, track_errors
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
async def shop(tmp_path: Path, make_database: Callable[[], str]) -> AsyncIterator[dict[str, Any]]:
    url = make_database()
    shop_port = free_port()
    cluster = LocalCluster(tmp_path / "cluster", nodes=2, database_url=url,
                           node_env={"HERALD_ALLOWED_ORIGINS": f"http://127.0.0.1:{shop_port}"})
    await cluster.start()  # migrates Herald's schema
    env = {**os.environ, "SHOP_DATABASE_URL": url, "SHOP_PORT": str(shop_port),
           "HERALD_URL": cluster.url, "HERALD_SECRET": cluster.secret,
           "PYTHONPATH": str(SHOP)}
    migrated = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=SHOP,
        env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shop", cwd=SHOP, env=env, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"shop: http://" in line, line
    sql = await asyncpg.connect(url)
    try:
        yield {"url": f"http://127.0.0.1:{shop_port}", "sql": sql, "cluster": cluster}
    finally:
        proc.terminate()
        await proc.wait()
        await sql.close()
        await cluster.stop()


async def sign_in(page: Page, shop_url: str, who: str) -> None:
    await page.goto(f"{shop_url}/login")
    await page.click(f"#login-{who}")


async def customer_page(browser, shop_url: str, context: Any = None) -> Page:  # noqa: F811
    page = track_errors(await context.new_page()) if context else await new_page(browser)
    if context is None:
        await sign_in(page, shop_url, "carol")
    else:
        await page.goto(shop_url + "/")
    await expect(page.locator("#herald")).to_have_attribute("state", "live")
    return page


def notes(page: Page):
    """The titles in the bell's panel (Playwright's selectors pierce the shadow root)."""
    return page.locator("#herald #list li .title")


def badge(page: Page):
    return page.locator("#herald #bell-badge")


async def ship(admin: Page, order: int, fail: bool = False) -> None:
    row = admin.locator(f'tr[data-order="{order}"]')
    if fail:
        await row.locator('input[name="fail"]').check()
    await row.locator("button.ship").click()
    await expect(admin.locator("#notice")).to_contain_text(f"Order #{order}")


async def test_the_admin_ships_and_the_customer_sees_it_live_on_any_node(
    shop, browser  # noqa: F811
) -> None:
    shop_url, sql = shop["url"], shop["sql"]
    carol = await customer_page(browser, shop_url)
    # A second tab of Carol's, on the other node. Its first socket has no shard yet, so
    # nginx picks a node by a hash of the request id, at random: reload until it is the
    # other one (20 tries: a 1 in a million chance of never).
    tab = track_errors(await carol.context.new_page())
    for _ in range(20):
        await tab.goto(shop_url + "/")
        await expect(tab.locator("#herald")).to_have_attribute("state", "live")
        if await tab.locator("#herald").get_attribute("data-node") != \
                await carol.locator("#herald").get_attribute("data-node"):
            break
    nodes = {await p.locator("#herald").get_attribute("data-node") for p in (carol, tab)}
    assert nodes == {"node-1", "node-2"}
    # The shop's theme reaches inside the element: a custom property and a ::part rule.
    colours = await carol.locator("#herald #bell").evaluate(
        "b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).borderRadius]")
    assert colours == ["rgb(74, 54, 39)", "50%"], colours

    admin = await new_page(browser)
    await sign_in(admin, shop_url, "admin")
    await ship(admin, 1)
    for page in (carol, tab):
        await expect(badge(page)).to_have_text("1")
        await expect(page.locator('[data-order="1"] .status')).to_have_text("shipped")
        await page.click("#herald #bell")
        await expect(page.locator("#herald #panel")).to_be_visible()
        await expect(notes(page)).to_have_text(["Order #1 shipped"])
        await expect(page.locator("#herald #list li .body")).to_have_text(
            ["Your espresso grinder is on its way."])
        await page.keyboard.press("Escape")  # closes the panel, focus back on the bell
        await expect(page.locator("#herald #panel")).to_be_hidden()
        await expect(page.locator("#herald #bell")).to_be_focused()
    row = await sql.fetchrow("SELECT o.status, n.title, n.category FROM shop.orders o "
                             "JOIN herald.notifications n ON n.data->>'order_id' = o.id::text "
                             "WHERE o.id = 1")
    assert tuple(row) == ("shipped", "Order #1 shipped", "orders")

    # A failure after the INSERT, inside the same transaction: nothing is saved or pushed.
    await ship(admin, 2, fail=True)
    await expect(admin.locator("#notice")).to_contain_text("nothing was saved")
    await asyncio.sleep(1.0)
    await expect(notes(carol)).to_have_count(1)
    assert await sql.fetchval("SELECT status FROM shop.orders WHERE id = 2") == "placed"
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications "
                              "WHERE data->>'order_id' = '2'") == 0

    # Carol is away (no page open) while order #3 ships; back, she sees it.
    context = carol.context
    for page in (carol, tab):
        await page.close()
    await ship(admin, 3)
    back = await customer_page(browser, shop_url, context)
    await expect(badge(back)).to_have_text("2")  # counted once each
    await back.click("#herald #bell")
    await expect(notes(back)).to_have_text(["Order #3 shipped", "Order #1 shipped"])
    await back.reload()  # a reload never empties the inbox
    await expect(back.locator("#herald")).to_have_attribute("state", "live")
    await expect(badge(back)).to_have_text("2")
    await back.click("#herald #bell")
    await expect(notes(back)).to_have_count(2)
    # Clicking the item reads it and follows its link, a path of the shop's own site.
    await back.locator("#herald #list li", has_text="Order #3").locator(".item-main").click()
    await back.wait_for_url(f"{shop_url}/orders/3")
    async def read() -> bool:
        return await sql.fetchval("SELECT read_at IS NOT NULL FROM herald.notifications "
                                  "WHERE data->>'order_id' = '3'")
    await wait_for(read, timeout=10)
    await expect(badge(back)).to_have_text("1")  # the order page has the bell too
    assert admin.errors == [] and back.errors == []  # type: ignore[attr-defined]
