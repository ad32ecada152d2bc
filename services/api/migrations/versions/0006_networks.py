"""Networks and their ports (every address a network hands out); VMs keep their cloud-init
seed's contents.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("cidr", sa.String(length=18), nullable=False),
        sa.Column("gateway", sa.String(length=15), nullable=True),
        sa.Column("dhcp", sa.Boolean(), nullable=False),
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=False),
        sa.Column("state", sa.Enum("CREATING", "ACTIVE", "DELETING", name="networkstate"), nullable=False),
        sa.Column("last_operation_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_networks_tenant_name"),
        sa.UniqueConstraint("vni", name="uq_networks_vni"),
    )
    op.create_index("ix_networks_tenant", "networks", ["tenant"])
    op.create_table(
        "ports",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("network_id", sa.String(), sa.ForeignKey("networks.id"), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.Enum("NIC", "DHCP", name="portkind"), nullable=False),
        sa.Column("vm_id", sa.String(), nullable=True),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ip", sa.String(length=15), nullable=False),
        sa.Column("attached", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("network_id", "ip", name="uq_ports_network_ip"),
        sa.UniqueConstraint("mac", name="uq_ports_mac"),
    )
    op.create_index("ix_ports_network_id", "ports", ["network_id"])
    op.create_index("ix_ports_vm_id", "ports", ["vm_id"])
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("hostname", sa.String(length=63), nullable=True))
        batch.add_column(sa.Column("user_data", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ssh_authorized_keys", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        for column in ("ssh_authorized_keys", "user_data", "hostname"):
            batch.drop_column(column)
    op.drop_index("ix_ports_vm_id", table_name="ports")
    op.drop_index("ix_ports_network_id", table_name="ports")
    op.drop_table("ports")
    op.drop_index("ix_networks_tenant", table_name="networks")
    op.drop_table("networks")
    sa.Enum(name="portkind").drop(op.get_bind(), checkfirst=True)
    sa.Enum(name="networkstate").drop(op.get_bind(), checkfirst=True)
