"""``python -m shop``: run the shop (after ``alembic upgrade head`` in this folder).

Environment: ``SHOP_DATABASE_URL`` (the same PostgreSQL as Herald), ``SHOP_PORT``
(default 8000), ``HERALD_URL`` (Herald's address for browsers, e.g. the nginx of
``herald cluster``: http://127.0.0.1:8080), ``HERALD_SECRET`` (the cluster's), and
optionally ``SHOP_URL`` (its public address, default http://127.0.0.1:SHOP_PORT),
``SHOP_COOKIE_SECRET`` and ``HERALD_COOKIE_DOMAIN``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shop.app import Settings, make_app
from shop.tables import customers, orders

DEMO_CUSTOMERS = [("carol", "Carol"), ("dave", "Dave")]
DEMO_ORDERS = [("carol", "espresso grinder"), ("carol", "milk jug"), ("carol", "tamper"),
               ("dave", "kettle"), ("dave", "pour-over stand")]


def engine_for(url: str) -> AsyncEngine:
    return create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1),
                               pool_size=5)


async def seed(engine: AsyncEngine) -> None:
    """Demo customers and orders, the first time only."""
    async with engine.begin() as conn:
        if (await conn.execute(select(customers.c.id).limit(1))).first() is not None:
            return
        await conn.execute(insert(customers), [{"id": i, "name": n} for i, n in DEMO_CUSTOMERS])
        await conn.execute(insert(orders), [{"customer_id": c, "item": item}
                                            for c, item in DEMO_ORDERS])


async def main() -> None:
    try:
        url, herald_url, secret = (os.environ[k] for k in
                                   ("SHOP_DATABASE_URL", "HERALD_URL", "HERALD_SECRET"))
    except KeyError as missing:
        sys.exit(f"shop: set {missing.args[0]} (see python -m shop's docstring)")
    engine = engine_for(url)
    await seed(engine)
    port = int(os.environ.get("SHOP_PORT", "8000"))
    shop_url = os.environ.get("SHOP_URL") or f"http://127.0.0.1:{port}"
    app = make_app(engine, Settings(shop_url, herald_url.rstrip("/"), secret,
                                    os.environ.get("HERALD_COOKIE_DOMAIN") or None),
                   os.environ.get("SHOP_COOKIE_SECRET") or secrets.token_hex(16))
    app.listen(port, "127.0.0.1")
    print(f"shop: http://127.0.0.1:{port}/login (Herald at {herald_url})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
