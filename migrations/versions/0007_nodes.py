"""nodes: every node announces itself (heartbeats) so that the cluster can see itself

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

``herald.nodes`` has one row per node, written by the node every few seconds: its
sockets, when it started, whether it leads the relay, whether it drains. Nodes read it
to know their share of the sockets (and shed a surplus, app/membership.py);
``herald status`` reads it to show the cluster. A node that stops gracefully deletes its
row; a row whose heartbeat is old belongs to a node that died.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("sockets", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("relay_leader", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("draining", sa.Boolean(), nullable=False, server_default="false"),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
        schema="herald",
    )


def downgrade() -> None:
    op.drop_table("nodes", schema="herald")
