"""Networks and their ports in the inventory: table models and the request/response shapes.

A port is one address on a network, whoever holds it (a VM's NIC, the network's DHCP server);
later security groups and routers attach to ports, so every address a network hands out is one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel

from services.api.models import NAME_RULE, check_name, utcnow
from shared.networks import OVERLAY_MTU, PortKind


class NetworkState(StrEnum):
    CREATING = "creating"
    ACTIVE = "active"
    DELETING = "deleting"


class Network(SQLModel, table=True):
    __tablename__ = "networks"
    __table_args__ = (
        UniqueConstraint("tenant", "name", name="uq_networks_tenant_name"),
        UniqueConstraint("vni", name="uq_networks_vni"),
    )

    id: str = SqlField(default_factory=lambda: f"net-{uuid.uuid4().hex[:12]}", primary_key=True)
    tenant: str = SqlField(index=True, max_length=63)
    name: str = SqlField(max_length=63)
    cidr: str = SqlField(max_length=18)
    gateway: str | None = SqlField(default=None, max_length=15)
    dhcp: bool = True
    vni: int
    mtu: int = OVERLAY_MTU
    state: NetworkState = NetworkState.CREATING
    last_operation_id: str | None = None
    created_at: datetime = SqlField(default_factory=utcnow)


class Port(SQLModel, table=True):
    __tablename__ = "ports"
    __table_args__ = (
        UniqueConstraint("network_id", "ip", name="uq_ports_network_ip"),
        UniqueConstraint("mac", name="uq_ports_mac"),
    )

    id: str = SqlField(default_factory=lambda: f"port-{uuid.uuid4().hex[:12]}", primary_key=True)
    network_id: str = SqlField(foreign_key="networks.id", index=True)
    tenant: str = SqlField(max_length=63)
    kind: PortKind
    vm_id: str | None = SqlField(default=None, index=True)  # the VM whose NIC it is
    slot: int = 0  # the NIC's place among the VM's NICs (eth0, eth1, ... in most guests)
    mac: str = SqlField(max_length=17)
    ip: str = SqlField(max_length=15)
    attached: bool = True  # False while a hot-plug is under way or failed to finish
    created_at: datetime = SqlField(default_factory=utcnow)


class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE)
    cidr: str = Field(description="IPv4 subnet, e.g. 10.0.0.0/24 (a /16 to a /29)", max_length=18)
    gateway: str | None = Field(default=None, description="an address of the subnet given to guests as "
                                                          "their router; none by default", max_length=15)
    dhcp: bool = Field(default=True, description="serve each port its address by DHCP")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class NetworkPublic(BaseModel):
    id: str
    name: str
    tenant: str
    cidr: str
    gateway: str | None
    dhcp: bool
    dhcp_address: str | None = None
    vni: int
    mtu: int
    state: NetworkState
    last_operation_id: str | None
    created_at: datetime


class PortPublic(BaseModel):
    id: str
    network_id: str
    kind: PortKind
    vm_id: str | None
    mac: str
    ip: str
    attached: bool
