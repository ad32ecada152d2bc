"""VMs can be migrating.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite stores the state as plain text; PostgreSQL has a native enum type to extend.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE vmstate ADD VALUE IF NOT EXISTS 'MIGRATING'")


def downgrade() -> None:
    pass  # PostgreSQL cannot drop an enum value; an unused one is harmless
