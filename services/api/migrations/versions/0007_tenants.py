"""Tenants with their quotas, users, API tokens (hashes only), the quota ledger and the audit
trail. Every tenant named so far becomes a tenant without limits, and its VMs and networks count
in its quota.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_RESOURCES = ("vms", "vcpus", "memory_mib", "disk_gib", "volumes", "snapshots", "networks")


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=63), primary_key=True),
        sa.Column("description", sa.String(length=200), nullable=False),
        *(sa.Column(f"quota_{r}", sa.Integer(), nullable=True) for r in _RESOURCES),
        # Bumped by every reservation: the row lock that serializes a tenant's quota checks.
        sa.Column("quota_serial", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),  # a tombstone: the name is not reused
    )
    op.bulk_insert(tenants, [{"id": "default", "description": "the tenant of everything made before tenants",
                              "quota_serial": 0, "created_at": datetime.now(UTC)}])
    op.create_table(
        "users",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(length=63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_users_tenant_name"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=16), primary_key=True),
        sa.Column("user_id", sa.String(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("role", sa.Enum("READER", "MEMBER", "ADMIN", name="role"), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_api_tokens_tenant", "api_tokens", ["tenant"])
    op.create_table(
        "quota_holds",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("state", sa.Enum("RESERVED", "USED", name="holdstate"), nullable=False),
        *(sa.Column(r, sa.Integer(), nullable=False, server_default="0") for r in _RESOURCES),
        sa.Column("merge_into", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_quota_holds_tenant", "quota_holds", ["tenant"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=True),
        sa.Column("user", sa.String(length=63), nullable=True),
        sa.Column("tenant", sa.String(length=63), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=300), nullable=False),
        sa.Column("action", sa.String(length=120), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=True),
        sa.Column("operation_id", sa.String(length=200), nullable=True),
    )
    op.create_index("ix_audit_tenant", "audit", ["tenant"])
    _backfill(datetime.now(UTC))


def _backfill(now: datetime) -> None:
    """Every tenant named so far gets a row (no limits), and every VM and network its hold, so
    that quotas set later count what exists."""
    bind = op.get_bind()
    # PostgreSQL's enum type takes no text without a cast; SQLite's column is text.
    hold_state = "CAST({} AS holdstate)" if bind.dialect.name == "postgresql" else "{}"
    bind.execute(sa.text(
        "INSERT INTO tenants (id, description, quota_serial, created_at) "
        "SELECT known.t, '', 0, :now FROM (SELECT tenant AS t FROM vms UNION SELECT tenant FROM networks "
        "UNION SELECT tenant FROM placement_groups) AS known WHERE known.t NOT IN (SELECT id FROM tenants)"),
        {"now": now})
    bind.execute(sa.text(
        "INSERT INTO quota_holds (key, tenant, state, vms, vcpus, memory_mib, disk_gib, volumes, snapshots, "
        "networks, created_at) SELECT 'vm/' || id, tenant, "
        + hold_state.format("CASE WHEN state = 'PROVISIONING' THEN 'RESERVED' ELSE 'USED' END")
        + ", 1, vcpus, memory_mib, disk_gib, 0, 0, 0, :now FROM vms"), {"now": now})
    bind.execute(sa.text(
        "INSERT INTO quota_holds (key, tenant, state, vms, vcpus, memory_mib, disk_gib, volumes, snapshots, "
        "networks, created_at) SELECT 'network/' || id, tenant, " + hold_state.format("'USED'")
        + ", 0, 0, 0, 0, 0, 0, 1, :now FROM networks"),
        {"now": now})


def downgrade() -> None:
    for table in ("audit", "quota_holds", "api_tokens", "users", "tenants"):
        op.drop_table(table)
