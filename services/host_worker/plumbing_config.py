"""The pure half of a host's network plumbing: the kernel's state as `ip`, `bridge` and `nft`
report it, parsed into values, and the commands that bring it to what a network needs.

Nothing here runs a command or touches a file; services/host_worker/plumbing.py does, and
tests/unit/test_plumbing.py checks these functions on plain values. A command is a tuple of
argv strings; every list of commands is empty when the state is already as wanted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidRequest
from shared.networks import (
    DhcpHost,
    NetworkPlumbing,
    bridge_name,
    dhcp_link_name,
    vxlan_name,
)

Command = tuple[str, ...]

VXLAN_UDP_PORT = 4789  # IANA's; the kernel's default (8472) is Linux's historic one
ALL_ZERO_MAC = "00:00:00:00:00:00"  # an FDB entry for it: flood (head-end replication) to that peer
DHCP_IFNAME = "dhcp0"  # the DHCP server's side of the veth, inside its namespace
DHCP_UDP_PORTS = (67, 68)  # server and client: every DHCPv4 message has one of them as dport
DHCP_LEASE_TIME = "1h"  # clients renew at half of it, so an address change reaches them in 30 min
NFT_TABLE = "vmflow"
NFT_PRIORITY = 0

_MAC_RULE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_HOSTNAME_RULE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_NFT_CHAIN_LINE = re.compile(r"^\s*chain (\S+) \{", re.MULTILINE)
_TRAILING_DIGITS = re.compile(r"\d+$")


@dataclass(frozen=True)
class Link:
    """One network interface as `ip -d -j address show` reports it."""

    name: str
    kind: str = ""  # "bridge", "vxlan", "veth"; "" for a device without linkinfo (lo)
    mtu: int = 1500
    up: bool = False  # administratively up (the UP flag), whatever the carrier
    master: str | None = None
    mac: str = ""
    vxlan_id: int | None = None
    vxlan_local: str | None = None
    vxlan_port: int | None = None
    addresses: tuple[str, ...] = ()  # IPv4 only, as "10.0.0.2/24"


@dataclass(frozen=True)
class DnsmasqFiles:
    """Where one network's dnsmasq keeps its pid, static hosts, leases and log."""

    pid: Path
    hosts: Path
    leases: Path
    log: Path

    def all(self) -> tuple[Path, ...]:
        return (self.pid, self.hosts, self.leases, self.log)


# -- checks -----------------------------------------------------------------------------------------------


def check_plumbing(net: NetworkPlumbing) -> None:
    """Refuse values that would break a command or inject a dnsmasq line. Raises InvalidRequest."""
    try:
        _check_plumbing(net)
    except ValueError as exc:  # from ipaddress: an address or network that is none
        raise InvalidRequest(f"network {net.network_id}: {exc}") from None


def _check_plumbing(net: NetworkPlumbing) -> None:
    network = ipaddress.IPv4Network(net.cidr)
    if not 0 < net.vni < 2**24:
        raise InvalidRequest(f"network {net.network_id}: VNI {net.vni} is out of range")
    if not 68 <= net.mtu <= 9000:
        raise InvalidRequest(f"network {net.network_id}: mtu {net.mtu} is out of range")
    if net.dhcp_address is not None:
        if ipaddress.IPv4Address(net.dhcp_address) not in network:
            raise InvalidRequest(f"network {net.network_id}: DHCP address {net.dhcp_address} is outside {network}")
        if net.dhcp_mac is None or not _MAC_RULE.match(net.dhcp_mac):
            raise InvalidRequest(f"network {net.network_id}: DHCP needs a MAC, got {net.dhcp_mac!r}")
    for host in net.hosts:
        if not _MAC_RULE.match(host.mac):
            raise InvalidRequest(f"network {net.network_id}: {host.mac!r} is not a MAC")
        if ipaddress.IPv4Address(host.ip) not in network:
            raise InvalidRequest(f"network {net.network_id}: {host.ip} ({host.mac}) is outside {network}")


def wanted_peers(peers: Iterable[str], local_address: str) -> frozenset[str]:
    """The underlay addresses to flood to: every peer but this host. Raises InvalidRequest."""
    try:
        return frozenset(str(ipaddress.IPv4Address(p)) for p in peers) - {local_address}
    except ValueError as exc:
        raise InvalidRequest(f"peers: {exc}") from None


# -- parsing what the kernel reports ---------------------------------------------------------------------------


def parse_links(ip_json: str) -> dict[str, Link]:
    """`ip -d -j address show` output, by interface name."""
    links = {}
    for entry in json.loads(ip_json or "[]"):
        info = entry.get("linkinfo", {})
        data = info.get("info_data", {}) if info.get("info_kind") == "vxlan" else {}
        addresses = tuple(
            f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", []) if a.get("family") == "inet"
        )
        links[entry["ifname"]] = Link(
            name=entry["ifname"], kind=info.get("info_kind", ""), mtu=entry.get("mtu", 0),
            up="UP" in entry.get("flags", []), master=entry.get("master"), mac=entry.get("address", ""),
            vxlan_id=data.get("id"), vxlan_local=data.get("local"), vxlan_port=data.get("port"),
            addresses=addresses,
        )  # fmt: skip
    return links


def parse_flood_peers(fdb_json: str, device: str = "") -> dict[str, frozenset[str]]:
    """`bridge -j fdb show [dev <device>]` output: the all-zero (flooding) destinations of each
    device (`dev` leaves the device's name out of the entries)."""
    peers: dict[str, set[str]] = {}
    for entry in json.loads(fdb_json or "[]"):
        if entry.get("mac") == ALL_ZERO_MAC and "dst" in entry:
            peers.setdefault(entry.get("ifname", device), set()).add(entry["dst"])
    return {name: frozenset(dsts) for name, dsts in peers.items()}


def parse_namespaces(ip_netns_list: str) -> frozenset[str]:
    """`ip netns list` output ("name" or "name (id: 3)" per line)."""
    return frozenset(line.split()[0] for line in ip_netns_list.splitlines() if line.strip())


def parse_pids(ip_netns_pids: str) -> tuple[int, ...]:
    return tuple(int(word) for word in ip_netns_pids.split() if word.isdigit())


def vnis_of(links: Mapping[str, Link], kind: str, name_of: Callable[[int], str]) -> set[int]:
    """The VNIs whose link of that kind exists, by the naming rule: `vnb-1000` -> 1000."""
    vnis = set()
    for link in links.values():
        digits = _TRAILING_DIGITS.search(link.name)
        if link.kind == kind and digits and name_of(int(digits.group())) == link.name:
            vnis.add(int(digits.group()))
    return vnis


# -- the commands --------------------------------------------------------------------------------------------


def bridge_commands(net: NetworkPlumbing, links: Mapping[str, Link]) -> list[Command]:
    """The network's bridge: present, up, with the network's MTU and no address (addrgenmode
    none keeps even an IPv6 link-local address off it: the host never speaks on a network)."""
    name = bridge_name(net.vni)
    link = links.get(name)
    if link is not None and link.kind != "bridge":
        return [("ip", "link", "del", name), *bridge_commands(net, {})]
    if link is None:
        return [("ip", "link", "add", name, "mtu", str(net.mtu), "type", "bridge"),
                ("ip", "link", "set", name, "addrgenmode", "none"),
                ("ip", "link", "set", name, "up")]  # fmt: skip
    commands: list[Command] = []
    if link.mtu != net.mtu:
        commands.append(("ip", "link", "set", name, "mtu", str(net.mtu)))
    if not link.up:
        commands.append(("ip", "link", "set", name, "up"))
    return commands


def vxlan_commands(net: NetworkPlumbing, local_address: str, links: Mapping[str, Link]) -> list[Command]:
    """The network's VXLAN device: VNI, local underlay address and port as wanted (else it is
    made again), the network's MTU, a port of the bridge, up. Learning stays on (see plumbing.py)."""
    name, bridge = vxlan_name(net.vni), bridge_name(net.vni)
    link = links.get(name)
    wanted = ("vxlan", net.vni, local_address, VXLAN_UDP_PORT)
    if link is not None and (link.kind, link.vxlan_id, link.vxlan_local, link.vxlan_port) != wanted:
        return [("ip", "link", "del", name), *vxlan_commands(net, local_address, {})]
    if link is None:
        return [("ip", "link", "add", name, "mtu", str(net.mtu), "type", "vxlan", "id", str(net.vni),
                 "local", local_address, "dstport", str(VXLAN_UDP_PORT)),
                ("ip", "link", "set", name, "addrgenmode", "none"),
                ("ip", "link", "set", name, "master", bridge, "up")]  # fmt: skip
    return _port_commands(link, net.mtu, bridge)


def _port_commands(link: Link, mtu: int, bridge: str) -> list[Command]:
    commands: list[Command] = []
    if link.mtu != mtu:
        commands.append(("ip", "link", "set", link.name, "mtu", str(mtu)))
    if link.master != bridge or not link.up:
        commands.append(("ip", "link", "set", link.name, "master", bridge, "up"))
    return commands


def flood_commands(device: str, current: Iterable[str], wanted: Iterable[str]) -> list[Command]:
    """All-zero FDB entries of a VXLAN device: exactly the wanted peers, added before deleted."""
    have, want = set(current), set(wanted)
    add = [("bridge", "fdb", "append", ALL_ZERO_MAC, "dev", device, "dst", p) for p in sorted(want - have)]
    delete = [("bridge", "fdb", "del", ALL_ZERO_MAC, "dev", device, "dst", p) for p in sorted(have - want)]
    return add + delete


def dhcp_port_commands(
    net: NetworkPlumbing, namespace: str, host_links: Mapping[str, Link],
    namespace_links: Mapping[str, Link] | None,
) -> list[Command]:  # fmt: skip
    """The DHCP server's namespace and its veth into the bridge, with the network's DHCP
    address and MAC. ``namespace_links`` is None when the namespace does not exist."""
    assert net.dhcp_address is not None and net.dhcp_mac is not None
    host_side, bridge = dhcp_link_name(net.vni), bridge_name(net.vni)
    address = f"{net.dhcp_address}/{ipaddress.IPv4Network(net.cidr).prefixlen}"
    commands: list[Command] = []
    if namespace_links is None:
        commands += [("ip", "netns", "add", namespace), ("ip", "-n", namespace, "link", "set", "lo", "up")]
        namespace_links = {}
    inside = namespace_links.get(DHCP_IFNAME)
    if inside is None:
        if host_side in host_links:  # its peer is gone: a veth of no use
            commands.append(("ip", "link", "del", host_side))
        commands += [
            ("ip", "link", "add", host_side, "mtu", str(net.mtu), "type", "veth", "peer", "name", DHCP_IFNAME,
             "mtu", str(net.mtu), "address", net.dhcp_mac.lower(), "netns", namespace),
            ("ip", "link", "set", host_side, "addrgenmode", "none"),
            ("ip", "-n", namespace, "link", "set", DHCP_IFNAME, "addrgenmode", "none"),
            ("ip", "-n", namespace, "address", "add", address, "dev", DHCP_IFNAME),
            ("ip", "-n", namespace, "link", "set", DHCP_IFNAME, "up"),
            ("ip", "link", "set", host_side, "master", bridge, "up"),
        ]  # fmt: skip
        return commands
    return commands + _dhcp_inside_commands(net, namespace, inside, address) + _port_commands(
        host_links.get(host_side, Link(host_side)), net.mtu, bridge
    )


def _dhcp_inside_commands(net: NetworkPlumbing, namespace: str, inside: Link, address: str) -> list[Command]:
    ns_ip = ("ip", "-n", namespace)
    commands: list[Command] = []
    if inside.mac != (net.dhcp_mac or "").lower():  # `ip` reports MACs in lowercase
        commands.append((*ns_ip, "link", "set", DHCP_IFNAME, "address", (net.dhcp_mac or "").lower()))
    if inside.mtu != net.mtu:
        commands.append((*ns_ip, "link", "set", DHCP_IFNAME, "mtu", str(net.mtu)))
    for stale in sorted(set(inside.addresses) - {address}):
        commands.append((*ns_ip, "address", "del", stale, "dev", DHCP_IFNAME))
    if address not in inside.addresses:
        commands.append((*ns_ip, "address", "add", address, "dev", DHCP_IFNAME))
    if not inside.up:
        commands.append((*ns_ip, "link", "set", DHCP_IFNAME, "up"))
    return commands


# -- nftables: DHCP stays on its host ------------------------------------------------------------------------


def nft_chain_name(vni: int) -> str:
    return f"net-{vni}"


def nft_rules(net: NetworkPlumbing) -> list[str]:
    """The network's rules (nft syntax, without the `add rule <table> <chain>` head). With DHCP
    on, its messages and every frame from or to the DHCP server's MAC (its ARP answers too: the
    same IP and MAC live on every host) never cross the VXLAN port, in either direction. A
    network without DHCP has none: its tenants may run their own DHCP server."""
    if net.dhcp_address is None or net.dhcp_mac is None:
        return []
    mac = net.dhcp_mac.lower()
    ports = ", ".join(str(p) for p in DHCP_UDP_PORTS)
    rules = []
    for direction in ("iifname", "oifname"):
        match = f'{direction} "{vxlan_name(net.vni)}"'
        rules.append(f"{match} udp dport {{ {ports} }} counter drop")
        rules.append(f"{match} ether saddr {mac} counter drop")
        rules.append(f"{match} ether daddr {mac} counter drop")
    return rules


def nft_comment(net: NetworkPlumbing) -> str:
    """The chain's comment names the rules it holds: a listing tells whether they are current."""
    digest = hashlib.sha256("\n".join(nft_rules(net)).encode()).hexdigest()[:16]
    return f"vmflow vni {net.vni} rules {digest}"


def nft_chain_is_current(listing: str, net: NetworkPlumbing) -> bool:
    """Whether `nft list chain` output shows the network's chain with its current rules."""
    return f'comment "{nft_comment(net)}"' in listing


def nft_ensure_script(net: NetworkPlumbing, chain_exists: bool) -> str:
    """One atomic `nft -f -` transaction that (re)makes the network's chain, a base chain on
    the bridge family's forward hook."""
    chain, head = nft_chain_name(net.vni), f"bridge {NFT_TABLE}"
    lines = [f"add table {head}"]
    if chain_exists:
        lines += [f"flush chain {head} {chain}", f"delete chain {head} {chain}"]
    lines.append(
        f"add chain {head} {chain} {{ type filter hook forward priority {NFT_PRIORITY}; policy accept; "
        f'comment "{nft_comment(net)}"; }}'
    )
    lines += [f"add rule {head} {chain} {rule}" for rule in nft_rules(net)]
    return "\n".join(lines) + "\n"


def nft_chains(table_listing: str) -> set[str]:
    """The chains of an `nft list table` output."""
    return set(_NFT_CHAIN_LINE.findall(table_listing))


def nft_remove_script(vni: int, table_listing: str) -> str:
    """Removes the network's chain, and the table once no chain is left; "" if nothing to do."""
    chains, chain, head = nft_chains(table_listing), nft_chain_name(vni), f"bridge {NFT_TABLE}"
    if chain not in chains:
        return ""
    if chains == {chain}:
        return f"delete table {head}\n"
    return f"flush chain {head} {chain}\ndelete chain {head} {chain}\n"


# -- dnsmasq ------------------------------------------------------------------------------------------------


def dnsmasq_files(state_dir: Path, vni: int) -> DnsmasqFiles:
    stem = state_dir / f"dhcp-{vni}"
    return DnsmasqFiles(
        pid=stem.with_suffix(".pid"), hosts=stem.with_suffix(".hosts"),
        leases=stem.with_suffix(".leases"), log=stem.with_suffix(".log"),
    )  # fmt: skip


def dnsmasq_argv(net: NetworkPlumbing, files: DnsmasqFiles) -> Command:
    """dnsmasq as a DHCP server of static entries only, bound to the namespace's dhcp0. An
    option given without a value is one dnsmasq must not send (it would name itself as router
    and DNS server otherwise)."""
    network = ipaddress.IPv4Network(net.cidr)
    router = f"option:router,{net.gateway}" if net.gateway else "option:router"
    return (
        "dnsmasq", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
        "--bind-interfaces", f"--interface={DHCP_IFNAME}", "--except-interface=lo",
        f"--dhcp-range={network.network_address},static,{network.netmask},{DHCP_LEASE_TIME}",
        f"--dhcp-hostsfile={files.hosts}", "--dhcp-authoritative",
        f"--dhcp-option={router}", "--dhcp-option=option:dns-server", f"--dhcp-option=option:mtu,{net.mtu}",
        f"--dhcp-leasefile={files.leases}", f"--pid-file={files.pid}", f"--log-facility={files.log}",
    )  # fmt: skip


def hosts_file_text(hosts: Iterable[DhcpHost]) -> str:
    """dnsmasq's --dhcp-hostsfile: `mac,ip[,hostname]` per line, sorted so the same entries
    always give the same text. A hostname DHCP cannot carry is left out."""
    lines = []
    for host in sorted(hosts, key=lambda h: (h.mac.lower(), h.ip)):
        name = host.hostname if _HOSTNAME_RULE.match(host.hostname) else ""
        lines.append(",".join(part for part in (host.mac.lower(), host.ip, name) if part))
    return "".join(f"{line}\n" for line in lines)


def is_dnsmasq(cmdline: tuple[str, ...] | None) -> bool:
    return bool(cmdline) and Path(cmdline[0]).name == "dnsmasq"


def is_dnsmasq_of(cmdline: tuple[str, ...] | None, files: DnsmasqFiles) -> bool:
    """Whether a process's argv is the dnsmasq of these files (not another network's, nor a
    process that took over a dead one's pid)."""
    return is_dnsmasq(cmdline) and f"--pid-file={files.pid}" in (cmdline or ())
