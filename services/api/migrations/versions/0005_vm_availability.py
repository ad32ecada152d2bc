"""VMs say whether they are highly available, their restart priority and what to do on a crash;
they can be recovering or crashed.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for value in ("RECOVERING", "CRASHED"):
            op.execute(f"ALTER TYPE vmstate ADD VALUE IF NOT EXISTS '{value}'")
    action = sa.Enum("RESTART", "NONE", name="crashaction")
    action.create(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("ha", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("restart_priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("on_crash", action, nullable=False, server_default="RESTART"))
        batch.add_column(sa.Column("crash_history", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        for column in ("crash_history", "on_crash", "restart_priority", "ha"):
            batch.drop_column(column)
    sa.Enum(name="crashaction").drop(op.get_bind(), checkfirst=True)
