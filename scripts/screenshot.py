"""Regenerate docs/inbox.png: a dev node on a throwaway embedded PostgreSQL, a signed-in
user with a few notifications, one of them just arriving. Run from the repo root:

    .venv/bin/python scripts/screenshot.py
(For CJK and emoji glyphs install fonts-noto-cjk and fonts-noto-color-emoji first.)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import db, schema  # noqa: E402
from app.config import Config  # noqa: E402
from app.server import HeraldServer  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

NOTIFICATIONS = [  # title, body, link, category, expires in (hours)
    ("Order #1001 shipped", "On its way, arriving Thursday", "/orders/1001", "orders", None),
    ("Payment received", "€49.90 for order #1001", None, "orders", None),
    ("Your review was published", "Thanks for rating the espresso grinder ★★★★★", None,
     None, None),
    ("您的订单已发货 🚚", "预计周四送达", None, "orders", None),
    ("Price drop on your wishlist", "Noise-cancelling headphones are now 20% off", None,
     "deals", 5),
]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = db.start_embedded(Path(tmp))
        await asyncio.to_thread(schema.upgrade, url)
        server = HeraldServer(Config(database_url=url, secret="screenshot-secret-0123456789",
                                     api_key=None, port=0, host="127.0.0.1", node="node-1",
                                     dev=True), url)
        await server.start()
        conn = await db.connect(url, "screenshot")
        try:
            insert = ("INSERT INTO herald.notifications (user_id, title, body, link, category, "
                      "expires_at) VALUES ('alice', $1, $2, $3, $4, "
                      "now() + make_interval(hours => $5))")
            for row in NOTIFICATIONS[:-1]:
                await conn.execute(insert, *row)
            await conn.execute("UPDATE herald.notifications SET read_at = now(), "
                               "created_at = now() - interval '2 hours' WHERE seq <= 2")
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                                  args=ARGS)
                page = await browser.new_page(viewport={"width": 720, "height": 700},
                                              device_scale_factor=2)
                await page.goto(f"http://127.0.0.1:{server.port}/login")
                await page.fill("#user", "alice")
                await page.click("button[type=submit]")
                await page.wait_for_selector("#status[data-state=live]")
                await conn.execute(insert, *NOTIFICATIONS[-1])
                # (wait_for_function would evaluate a string: the page's CSP forbids it)
                await page.locator("#list li").nth(4).wait_for()
                await asyncio.sleep(0.35)  # mid-highlight of the new arrival
                await page.screenshot(path=str(ROOT / "docs" / "inbox.png"))
                await browser.close()
        finally:
            await conn.close()
            await server.stop()
    print("wrote docs/inbox.png")


if __name__ == "__main__":
    asyncio.run(main())
