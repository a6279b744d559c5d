"""the shop: customers and orders

Revision ID: shop_0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "shop_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        schema="shop",
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("customer_id", sa.Text(), sa.ForeignKey("shop.customers.id"),
                  nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="placed"),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("shipped_at", sa.DateTime(timezone=True)),
        schema="shop",
    )


def downgrade() -> None:
    op.drop_table("orders", schema="shop")
    op.drop_table("customers", schema="shop")
