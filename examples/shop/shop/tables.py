"""The shop's own tables (schema ``shop``) and the one Herald table it writes to.

SQLAlchemy Core, nothing Herald-specific: a host application declares
``herald.notifications`` with just the columns it uses, and inserts into it like into
any table of its own.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

shop = MetaData(schema="shop")

customers = Table(
    "customers", shop,
    Column("id", Text, primary_key=True),  # also the Herald user id
    Column("name", Text, nullable=False),
)

orders = Table(
    "orders", shop,
    Column("id", Integer, primary_key=True),
    Column("customer_id", Text, ForeignKey("shop.customers.id"), nullable=False),
    Column("item", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="placed"),  # placed | shipped
    Column("placed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("shipped_at", DateTime(timezone=True)),
)

# Herald's table, as far as the shop needs it (its schema is Herald's to migrate).
herald = MetaData(schema="herald")

notifications = Table(
    "notifications", herald,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("seq", BigInteger),  # assigned by Herald's trigger
    Column("title", Text, nullable=False),
    Column("body", Text),
    Column("data", JSONB),
    Column("link", Text),
    Column("category", Text),
)
