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

NOTIFICATIONS = [
    ("Order #1001 shipped", "On its way, arriving Thursday", "/orders/1001"),
    ("Payment received", "€49.90 for order #1001", None),
    ("Your review was published", "Thanks for rating the espresso grinder ★★★★★", None),
    ("您的订单已发货 🚚", "预计周四送达", None),
    ("Price drop on your wishlist", "Noise-cancelling headphones are now 20% off", None),
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
            for title, body, link in NOTIFICATIONS[:-1]:
                await conn.execute("INSERT INTO herald.notifications (user_id, title, body, "
                                   "link) VALUES ('alice', $1, $2, $3)", title, body, link)
            await conn.execute("UPDATE herald.notifications SET read_at = now(), "
                               "created_at = now() - interval '2 hours' WHERE seq <= 2")
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                                  args=ARGS)
                page = await browser.new_page(viewport={"width": 720, "height": 640},
                                              device_scale_factor=2)
                await page.goto(f"http://127.0.0.1:{server.port}/login")
                await page.fill("#user", "alice")
                await page.click("button[type=submit]")
                await page.wait_for_selector("#status[data-state=live]")
                title, body, link = NOTIFICATIONS[-1]
                await conn.execute("INSERT INTO herald.notifications (user_id, title, body) "
                                   "VALUES ('alice', $1, $2)", title, body)
                await page.wait_for_function("document.querySelectorAll('#list li').length == 5")
                await asyncio.sleep(0.35)  # mid-highlight of the new arrival
                await page.screenshot(path=str(ROOT / "docs" / "inbox.png"))
                await browser.close()
        finally:
            await conn.close()
            await server.stop()
    print("wrote docs/inbox.png")


if __name__ == "__main__":
    asyncio.run(main())
