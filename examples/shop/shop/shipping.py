"""Shipping an order: the order's UPDATE and the customer's notification, in ONE
transaction. This is the whole integration; copy it.

Because the notification is a row written in the shop's own transaction, there is no
second system to call and no "dual write" to get wrong: if anything fails before COMMIT
(here: ``fail_after_insert``, standing for any later step that raises), both the order
change and the notification are rolled back, and Herald pushes nothing. At COMMIT,
Herald's trigger announces the row and the customer's browser gets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.tables import notifications, orders


class NotShippable(Exception):
    """No such order, or it was shipped already."""


class SimulatedFailure(Exception):
    """The failure the admin page can ask for, after the notification's INSERT."""


@dataclass(frozen=True)
class Shipped:
    order_id: int
    customer_id: str
    notification_id: int
    seq: int


async def ship(engine: AsyncEngine, order_id: int, shop_url: str,
               fail_after_insert: bool = False) -> Shipped:
    """Mark ``order_id`` shipped and notify its customer, atomically. The notification
    links to the order's page on ``shop_url`` (absolute: Herald's own inbox page shows
    it too, on Herald's address).

    Raises ``NotShippable`` (nothing changed) or ``SimulatedFailure`` (everything
    rolled back, nothing pushed)."""
    async with engine.begin() as conn:  # one transaction: COMMIT at the end, or ROLLBACK
        order = (await conn.execute(
            update(orders)
            .where(orders.c.id == order_id, orders.c.status == "placed")
            .values(status="shipped", shipped_at=func.now())
            .returning(orders.c.customer_id, orders.c.item)
        )).one_or_none()
        if order is None:
            raise NotShippable(f"order #{order_id} cannot be shipped")
        note = (await conn.execute(
            notifications.insert()
            .values(user_id=order.customer_id,
                    title=f"Order #{order_id} shipped",
                    body=f"Your {order.item} is on its way.",
                    data={"order_id": order_id},
                    link=f"{shop_url}/orders/{order_id}",
                    category="orders")
            .returning(notifications.c.id, notifications.c.seq)
        )).one()
        if fail_after_insert:
            raise SimulatedFailure("the shipping label service is down")
    return Shipped(order_id, order.customer_id, note.id, note.seq)
