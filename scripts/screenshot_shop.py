"""Regenerate docs/shop.png: the shop demo (examples/shop) on two Herald nodes behind
nginx: the customer's page with Herald's <herald-inbox> bell opened, just after the admin
shipped orders #1 and #3. Run from the repo root: .venv/bin/python
scripts/screenshot_shop.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald_dev.cluster import LocalCluster  # noqa: E402
from herald_dev.net import free_port  # noqa: E402

SHOP = ROOT / "examples" / "shop"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shop_port = free_port()
        cluster = LocalCluster(Path(tmp), nodes=2, node_env={
            "HERALD_ALLOWED_ORIGINS": f"http://127.0.0.1:{shop_port}"})
        await cluster.start()
        env = {**os.environ, "SHOP_DATABASE_URL": cluster.database_url,
               "SHOP_PORT": str(shop_port), "HERALD_URL": cluster.url,
               "HERALD_SECRET": cluster.secret, "PYTHONPATH": str(SHOP)}
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=SHOP,
                       env=env, check=True)
        shop = await asyncio.create_subprocess_exec(sys.executable, "-m", "shop", cwd=SHOP,
                                                    env=env, stdout=asyncio.subprocess.PIPE)
        assert shop.stdout is not None
        await shop.stdout.readline()
        url = f"http://127.0.0.1:{shop_port}"
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                                  args=ARGS)
                carol = await browser.new_page(viewport={"width": 960, "height": 700},
                                               device_scale_factor=2)
                await carol.goto(f"{url}/login")
                await carol.click("#login-carol")
                await carol.wait_for_selector("herald-inbox[state=live]")
                admin = await browser.new_page(viewport={"width": 900, "height": 420},
                                               device_scale_factor=2)
                await admin.goto(f"{url}/login")
                await admin.click("#login-admin")
                for order in (1, 3):
                    await admin.locator(f'tr[data-order="{order}"] button.ship').click()
                    await admin.wait_for_selector("#notice")
                await carol.locator("#herald #bell-badge", has_text="2").wait_for()
                await carol.click("#herald #bell")
                await carol.locator("#herald #list li").nth(1).wait_for()
                await carol.mouse.move(0, 0)
                await asyncio.sleep(4.5)  # the arrival highlight fades
                await carol.screenshot(path=str(ROOT / "docs" / "shop.png"))
                await browser.close()
        finally:
            shop.terminate()
            await shop.wait()
            await cluster.stop()
    print("wrote docs/shop.png")


if __name__ == "__main__":
    asyncio.run(main())
