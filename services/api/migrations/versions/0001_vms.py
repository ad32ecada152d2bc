"""The VM inventory.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VM_STATES = ("PROVISIONING", "RUNNING", "STOPPED", "STOPPING", "STARTING", "REBOOTING", "DELETING",
             "ERROR")


def upgrade() -> None:
    op.create_table(
        "vms",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=63), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("state", sa.Enum(*VM_STATES, name="vmstate"), nullable=False),
        sa.Column("host_id", sa.String(), nullable=True),
        sa.Column("last_operation_id", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_vms_tenant_name"),
    )
    op.create_index("ix_vms_tenant", "vms", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_vms_tenant", table_name="vms")
    op.drop_table("vms")
