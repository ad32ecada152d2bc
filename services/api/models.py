"""The VM inventory: table model and the request/response shapes derived from it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel

from shared.models import VmState

NAME_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
IMAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class VmBase(SQLModel):
    name: str = SqlField(max_length=63)
    vcpus: int
    memory_mib: int
    disk_gib: int
    image: str = SqlField(max_length=63)


class Vm(VmBase, table=True):
    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_vms_tenant_name"),)

    id: str = SqlField(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    tenant: str = SqlField(index=True, max_length=63)
    state: VmState = VmState.PROVISIONING
    host_id: str | None = None
    last_operation_id: str | None = None
    error: str | None = None
    created_at: datetime = SqlField(default_factory=utcnow)
    updated_at: datetime = SqlField(default_factory=utcnow)


class VmCreate(BaseModel):
    """Limits that depend on configuration or on the image are checked by the route."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1-63 letters, digits or '-', starting and ending with a letter or digit")
    vcpus: int = Field(ge=1, description="virtual CPUs")
    memory_mib: int = Field(ge=1, description="guest memory in MiB")
    disk_gib: int = Field(ge=1, description="root disk size in GiB")
    image: str = Field(description="name of an image from GET /v1/images")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "name must be 1-63 letters, digits or '-', starting and ending with a letter or digit"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_PATTERN.fullmatch(value):
            raise ValueError("image must be an image name from GET /v1/images")
        return value


class VmPublic(VmBase):
    id: str
    tenant: str
    state: VmState
    host_id: str | None
    last_operation_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


class PowerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=30.0, ge=0, le=3600, description="graceful shutdown wait")
    force: bool = Field(default=False, description="power off at once, no graceful shutdown")


class OperationAccepted(BaseModel):
    operation_id: str
    vm: VmPublic
