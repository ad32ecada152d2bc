"""Timestamps keep their zone on PostgreSQL, as the models say (sqlmodel's UTCDateTime).

Before, PostgreSQL's columns were ``timestamp without time zone``: an aware UTC time written to
one was turned into the session's local time, and read back as if it were UTC, so every time was
off by the server's offset unless the server ran in UTC. What was stored so far was written by
servers in UTC (the images' default), so it is read as UTC. SQLite keeps text; nothing changes there.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIMESTAMPS = {
    "vms": ("created_at", "updated_at"),
    "placement_groups": ("created_at",),
    "networks": ("created_at",),
    "ports": ("created_at",),
    "tenants": ("created_at", "deleted_at"),
    "users": ("created_at",),
    "api_tokens": ("created_at", "expires_at", "revoked_at"),
    "quota_holds": ("created_at",),
    "audit": ("at",),
}


def _retype(to: str) -> None:
    """Each timestamp column to type ``to``, its times read and written as UTC."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in TIMESTAMPS.items():
        changes = ", ".join(f'ALTER COLUMN "{c}" TYPE {to} USING "{c}" AT TIME ZONE \'UTC\'' for c in columns)
        op.execute(f'ALTER TABLE "{table}" {changes}')


def upgrade() -> None:
    _retype("TIMESTAMP WITH TIME ZONE")


def downgrade() -> None:
    _retype("TIMESTAMP WITHOUT TIME ZONE")
