"""What a host prepares for a VM's guest besides its disk: the networks its NICs are on and the
cloud-init seed (NoCloud). Values only; the inventory builds them, host-workers act on them."""

from __future__ import annotations

from dataclasses import dataclass

from shared.networks import NetworkPlumbing, NicSpec


@dataclass(frozen=True)
class SeedSpec:
    """A NoCloud seed: meta-data (instance-id = the VM id, local-hostname), user-data, and a
    network-config that asks for DHCP on every NIC, matched by MAC."""

    instance_id: str
    hostname: str
    user_data: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()


@dataclass(frozen=True)
class VmSetup:
    """Everything a host must have before the VM's domain can be defined, started or arrive there."""

    vm_id: str
    nics: tuple[NicSpec, ...] = ()
    networks: tuple[NetworkPlumbing, ...] = ()
    seed: SeedSpec | None = None


@dataclass(frozen=True)
class VmSetupRequest:
    vm_id: str


@dataclass(frozen=True)
class VmRelease:
    """The VM no longer needs this host: networks nothing else there uses go, and with
    ``remove_seed`` (the VM is deleted) its seed file."""

    vm_id: str
    remove_seed: bool = False


@dataclass(frozen=True)
class NicChange:
    """Plug a NIC into a VM on its host, or pull it out (definition and running guest alike)."""

    vm_id: str
    nic: NicSpec
    networks: tuple[NetworkPlumbing, ...] = ()


@dataclass(frozen=True)
class NicRef:
    vm_id: str
    port_id: str


@dataclass(frozen=True)
class NicOpInput:
    """AttachNic / DetachNic: the VM, the host it is on, and the port (its NIC)."""

    vm_id: str
    tenant: str
    host_id: str
    port_id: str
