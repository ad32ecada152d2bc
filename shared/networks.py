"""Virtual networks: the values the API, workflows and host-workers share, and the pure rules of
address management (IPAM) and of the names a network's plumbing takes on a host.

A network is one L2 segment across every host: a Linux bridge per host joined by a VXLAN device
with the network's VNI. Addresses are vmflow's: each port (a VM's NIC, the network's DHCP server,
later a router) gets its MAC and IPv4 address from the inventory, and DHCP on each host hands out
exactly those.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable

from shared.errors import Conflict, InvalidRequest

OVERLAY_MTU = 1450  # a 1500-byte underlay less VXLAN's 50 bytes of headers
MIN_PREFIX_LEN = 16  # at most 65,536 addresses: allocation scans the subnet
MAX_PREFIX_LEN = 29  # at least 8 addresses: network, broadcast, gateway, DHCP and four ports
MAX_NICS_PER_VM = 8
FIRST_VNI = 1000
MAX_VNI = 2**24 - 1
MAC_PREFIX = "52:54:00"  # QEMU's OUI, what libvirt gives NICs too


class PortKind(StrEnum):
    """Who owns a port on a network (Neutron's device_owner): security groups and routers will
    hang off ports, so every address on a network is one."""

    NIC = "nic"  # a VM's interface
    DHCP = "dhcp"  # the network's DHCP server, the same address and MAC on every host


@dataclass(frozen=True)
class DhcpHost:
    """One static DHCP entry: this MAC gets this address (and a hostname)."""

    mac: str
    ip: str
    hostname: str = ""


@dataclass(frozen=True)
class NetworkPlumbing:
    """What a host needs to carry a network: a bridge and a VXLAN device with the VNI and, when
    DHCP is on, a DHCP server answering the network's ports only on this host."""

    network_id: str
    vni: int
    cidr: str
    gateway: str | None = None
    dhcp_address: str | None = None  # None: no DHCP on this network
    dhcp_mac: str | None = None
    mtu: int = OVERLAY_MTU
    hosts: tuple[DhcpHost, ...] = ()

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)


@dataclass(frozen=True)
class NicSpec:
    """A VM's NIC as its domain definition needs it."""

    port_id: str
    network_id: str
    vni: int
    mac: str
    ip: str
    mtu: int = OVERLAY_MTU

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)


# -- names of the plumbing on a host (Linux interface names are at most 15 characters) ----------------------------


def bridge_name(vni: int) -> str:
    return f"vnb-{vni}"


def vxlan_name(vni: int) -> str:
    return f"vnx-{vni}"


def dhcp_link_name(vni: int) -> str:
    """The host side of the veth pair into the network's DHCP namespace."""
    return f"vnd-{vni}"


def dhcp_namespace(prefix: str, vni: int) -> str:
    return f"{prefix}dhcp-{vni}"


# -- address management ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subnet:
    """A network's IPv4 subnet, checked: its gateway and DHCP address are inside it."""

    cidr: str
    gateway: str | None
    dhcp_address: str | None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


def parse_subnet(cidr: str, gateway: str | None, dhcp: bool) -> Subnet:
    """The subnet a network create asks for, normalised (``10.0.0.5/24`` is refused, not
    silently truncated). The DHCP server takes the lowest usable address the gateway does not.
    Raises InvalidRequest naming the field at fault."""
    try:
        network = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"cidr: {cidr!r} is not an IPv4 network in CIDR notation ({exc})") from None
    if not MIN_PREFIX_LEN <= network.prefixlen <= MAX_PREFIX_LEN:
        raise InvalidRequest(
            f"cidr: a /{network.prefixlen} is not allowed; use a prefix from /{MIN_PREFIX_LEN} to /{MAX_PREFIX_LEN}"
        )
    gateway_ip = None
    if gateway is not None:
        gateway_ip = _usable_address(network, gateway, "gateway")
    dhcp_ip = None
    if dhcp:
        dhcp_ip = next(ip for ip in network.hosts() if ip != gateway_ip)
    return Subnet(
        str(network), str(gateway_ip) if gateway_ip else None, str(dhcp_ip) if dhcp_ip else None
    )


def _usable_address(network: ipaddress.IPv4Network, value: str, what: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidRequest(f"{what}: {value!r} is not an IPv4 address") from None
    if ip not in network:
        raise InvalidRequest(f"{what}: {ip} is outside {network}")
    if ip in (network.network_address, network.broadcast_address):
        raise InvalidRequest(f"{what}: {ip} is the network or broadcast address of {network}")
    return ip


def check_requested_ip(cidr: str, value: str, taken: Iterable[str]) -> str:
    """A fixed address asked for a NIC, if it is usable and free. Raises InvalidRequest when it
    is not an address of the subnet, Conflict when a port has it already."""
    ip = _usable_address(ipaddress.IPv4Network(cidr), value, "ip")
    if str(ip) in set(taken):
        raise Conflict(f"ip: {ip} is taken on this network")
    return str(ip)


def first_free_ip(cidr: str, taken: Iterable[str]) -> str:
    """The lowest usable address of the subnet no port has. Raises Conflict when it is full."""
    network = ipaddress.IPv4Network(cidr)
    used = set(taken)
    for ip in network.hosts():
        if str(ip) not in used:
            return str(ip)
    raise Conflict(f"network {network} is full: all {network.num_addresses - 2} usable addresses are taken")


def random_mac() -> str:
    """A MAC under vmflow's prefix; the inventory's unique index catches the rare repeat."""
    tail = secrets.token_bytes(3)
    return MAC_PREFIX + "".join(f":{b:02x}" for b in tail)


def first_free_vni(taken: Iterable[int]) -> int:
    used = set(taken)
    for vni in range(FIRST_VNI, MAX_VNI + 1):
        if vni not in used:
            return vni
    raise Conflict("every VXLAN network identifier is in use")


@dataclass(frozen=True)
class NetworkOpInput:
    """CreateNetwork / DeleteNetwork: the network, and (for a delete) its VNI on the hosts."""

    network_id: str
    tenant: str
    vni: int = 0


@dataclass(frozen=True)
class HostIds:
    host_ids: tuple[str, ...]


@dataclass(frozen=True)
class PortAttached:
    port_id: str
    attached: bool
