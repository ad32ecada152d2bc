"""Placement groups; VMs may join one and require host labels.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "placement_groups",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("policy", sa.Enum("AFFINITY", "ANTI_AFFINITY", name="grouppolicy"), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_placement_groups_tenant_name"),
    )
    op.create_index("ix_placement_groups_tenant", "placement_groups", ["tenant"])
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("placement_group_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("required_labels", sa.JSON(), nullable=False, server_default="[]"))
        batch.create_index("ix_vms_placement_group_id", ["placement_group_id"])
        batch.create_foreign_key("fk_vms_placement_group", "placement_groups", ["placement_group_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint("fk_vms_placement_group", type_="foreignkey")
        batch.drop_index("ix_vms_placement_group_id")
        batch.drop_column("required_labels")
        batch.drop_column("placement_group_id")
    op.drop_index("ix_placement_groups_tenant", table_name="placement_groups")
    op.drop_table("placement_groups")
