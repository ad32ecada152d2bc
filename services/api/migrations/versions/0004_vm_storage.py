"""VMs say where their root disk lives: the shared pool or their host's own.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    kind = sa.Enum("SHARED", "LOCAL", name="poolkind")
    kind.create(op.get_bind(), checkfirst=True)  # a type of its own on PostgreSQL
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("storage", kind, nullable=False, server_default="SHARED"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("storage")
    sa.Enum(name="poolkind").drop(op.get_bind(), checkfirst=True)
