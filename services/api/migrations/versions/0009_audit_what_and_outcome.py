"""The audit trail says more of who and what: the token's own tenant (an admin's records are the
fleet's, but the admin's tenant is part of who did it), the Location of what a change made, and a
short detail a route adds (a quota's new limits).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = (("token_tenant", 63), ("location", 300), ("detail", 300))


def upgrade() -> None:
    with op.batch_alter_table("audit") as table:
        for name, length in _COLUMNS:
            table.add_column(sa.Column(name, sa.String(length=length), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit") as table:
        for name, _ in _COLUMNS:
            table.drop_column(name)
