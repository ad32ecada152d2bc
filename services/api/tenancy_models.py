"""Tenants, users, API tokens and the quota ledger: table models and the API's shapes."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel

from services.api.models import utcnow
from shared.auth import Role
from shared.quota import Amounts, HoldState, Limits, Resource

TENANT_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TENANT_RULE = "1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
USER_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._@-]{0,61}[A-Za-z0-9])?$")
USER_RULE = "1-63 letters, digits or '._@-', starting and ending with a letter or digit"
MAX_TOKEN_LIFETIME_S = 366 * 86400


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: str = SqlField(primary_key=True, max_length=63)
    description: str = SqlField(default="", max_length=200)
    quota_vms: int | None = None
    quota_vcpus: int | None = None
    quota_memory_mib: int | None = None
    quota_disk_gib: int | None = None
    quota_volumes: int | None = None
    quota_snapshots: int | None = None
    quota_networks: int | None = None
    quota_serial: int = 0
    created_at: datetime = SqlField(default_factory=utcnow)
    # Deleted tenants stay as tombstones: a new tenant of the same name would otherwise inherit
    # the old one's audit trail and operations.
    deleted_at: datetime | None = None

    def limits(self) -> Limits:
        return Limits(**{r.value: getattr(self, f"quota_{r.value}") for r in Resource})


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_users_tenant_name"),)

    id: str = SqlField(default_factory=lambda: f"user-{uuid.uuid4().hex[:12]}", primary_key=True)
    tenant: str = SqlField(foreign_key="tenants.id", max_length=63)
    name: str = SqlField(max_length=63)
    created_at: datetime = SqlField(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: str = SqlField(primary_key=True, max_length=16)
    user_id: str = SqlField(foreign_key="users.id")
    tenant: str = SqlField(index=True, max_length=63)
    role: Role
    secret_hash: str
    description: str = SqlField(default="", max_length=200)
    created_by: str | None = SqlField(default=None, max_length=16)
    created_at: datetime = SqlField(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class QuotaHold(SQLModel, table=True):
    """One thing a tenant holds or is creating, with what it counts against the quota."""

    __tablename__ = "quota_holds"

    key: str = SqlField(primary_key=True)
    tenant: str = SqlField(index=True, max_length=63)
    state: HoldState = HoldState.RESERVED
    vms: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    volumes: int = 0
    snapshots: int = 0
    networks: int = 0
    merge_into: str | None = None  # a growth: added to this hold when it succeeds
    created_at: datetime = SqlField(default_factory=utcnow)

    def amounts(self) -> Amounts:
        return Amounts(**{r.value: getattr(self, r.value) for r in Resource})


# -- the API's shapes ----------------------------------------------------------------------------

def _check(pattern: re.Pattern, rule: str, what: str, value: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} must be {rule}")
    return value


class QuotaLimits(BaseModel):
    """Limits to set; a field left out keeps its value, null removes the limit."""

    model_config = ConfigDict(extra="forbid")

    vms: int | None = Field(default=None, ge=0)
    vcpus: int | None = Field(default=None, ge=0)
    memory_mib: int | None = Field(default=None, ge=0)
    disk_gib: int | None = Field(default=None, ge=0)
    volumes: int | None = Field(default=None, ge=0)
    snapshots: int | None = Field(default=None, ge=0)
    networks: int | None = Field(default=None, ge=0)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=TENANT_RULE)
    description: str = Field(default="", max_length=200)
    quota: QuotaLimits = Field(default_factory=QuotaLimits, description="limits; none given: no limit")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check(TENANT_PATTERN, TENANT_RULE, "name", value)


class TenantPublic(BaseModel):
    id: str
    description: str
    created_at: datetime


class ResourceUsage(BaseModel):
    limit: int | None
    used: int
    reserved: int
    available: int | None = Field(description="what a new request may still take; null: no limit")


class QuotaPublic(BaseModel):
    tenant: str
    resources: dict[str, ResourceUsage]
    warnings: list[str] = []


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=USER_RULE)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check(USER_PATTERN, USER_RULE, "name", value)


class UserPublic(BaseModel):
    id: str
    tenant: str
    name: str
    created_at: datetime


class TokenCreate(BaseModel):
    """A token for the caller's own user, or (admins) for ``user`` of ``tenant``. Its role may
    not exceed the caller's."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="reader, member or admin (admin needs an admin caller)")
    tenant: str | None = Field(default=None, description="admins only; default: the caller's tenant")
    user: str | None = Field(default=None, description="admins only; a user of the tenant (made if new)")
    expires_in_s: int | None = Field(default=None, ge=1, le=MAX_TOKEN_LIFETIME_S,
                                     description="lifetime; default: no expiry")
    description: str = Field(default="", max_length=200)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        return None if value is None else _check(TENANT_PATTERN, TENANT_RULE, "tenant", value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        return None if value is None else _check(USER_PATTERN, USER_RULE, "user", value)


class TokenPublic(BaseModel):
    id: str
    tenant: str
    user: str
    role: Role
    description: str
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenIssued(TokenPublic):
    token: str = Field(description="the secret, shown this once; send it as 'Authorization: Bearer <token>'")


class WhoAmI(BaseModel):
    token_id: str
    user: str
    tenant: str
    role: Role
