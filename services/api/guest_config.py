"""What a VM's guest is given besides CPU, memory and disk: NICs on networks, and the
cloud-init seed (hostname, user-data, SSH keys). Request shapes only, checked here."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.networks import MAX_NICS_PER_VM

HOSTNAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_USER_DATA_BYTES = 16 * 1024  # the seed is a small disk; Nova allows 64 KiB of base64
MAX_SSH_KEYS = 16
SSH_KEY_PATTERN = re.compile(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\n]*)?")


class NicRequest(BaseModel):
    """A NIC asked for on create or hot-plug: a network, and an address if it must be that one."""

    model_config = ConfigDict(extra="forbid")

    network_id: str = Field(max_length=64)
    ip: str | None = Field(default=None, max_length=15, description="default: the lowest free address")


class NicPublic(BaseModel):
    id: str  # the port's id
    network_id: str
    network_name: str
    mac: str
    ip: str
    attached: bool


class CloudInit(BaseModel):
    """What a VM's NoCloud seed carries besides its identity and NICs."""

    model_config = ConfigDict(extra="forbid")

    hostname: str | None = Field(default=None, max_length=63, description="default: the VM's name, lower-cased")
    user_data: str | None = Field(default=None, description=f"cloud-init user-data, at most "
                                                             f"{MAX_USER_DATA_BYTES} bytes")
    ssh_authorized_keys: list[str] = Field(default=[], max_length=MAX_SSH_KEYS)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not HOSTNAME_PATTERN.fullmatch(value):
            raise ValueError("hostname must be 1-63 lower-case letters, digits or '-', "
                             "starting and ending with a letter or digit")
        return value

    @field_validator("user_data")
    @classmethod
    def _user_data(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_USER_DATA_BYTES:
            raise ValueError(f"user_data is {len(value.encode())} bytes; at most {MAX_USER_DATA_BYTES}")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) > 4096 or not SSH_KEY_PATTERN.fullmatch(key):
                raise ValueError(f"ssh_authorized_keys: {key[:40]!r}... is not an OpenSSH public key line")
        return value


def check_nic_count(nics: list[NicRequest]) -> list[NicRequest]:
    if len(nics) > MAX_NICS_PER_VM:
        raise ValueError(f"a VM has at most {MAX_NICS_PER_VM} NICs, {len(nics)} asked")
    return nics
