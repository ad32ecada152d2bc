"""A host's network plumbing without a kernel: the pure commands, rules and dnsmasq files of
services/host_worker/plumbing_config.py, and NetworkPlumber driven by a recording runner that
answers the reads with canned `ip`/`bridge`/`nft` output and a fake process table."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.host_worker import plumbing_config as cfg
from services.host_worker.plumbing import CommandResult, NetworkPlumber
from shared.errors import InvalidRequest, NetworkError
from shared.networks import DhcpHost, NetworkPlumbing

LOCAL = "127.1.0.11"
PEER = "127.1.0.12"
NS = "lab-h1-dhcp-1000"
DHCP_MAC = "52:54:00:d0:00:01"
NET = NetworkPlumbing(
    network_id="n1", vni=1000, cidr="10.0.0.0/24", gateway="10.0.0.1", dhcp_address="10.0.0.2", dhcp_mac=DHCP_MAC,
    hosts=(DhcpHost("52:54:00:00:00:0b", "10.0.0.11", "web-1"), DhcpHost("52:54:00:00:00:0a", "10.0.0.10")),
)  # fmt: skip


def link(name: str, kind: str = "", mtu: int = 1450, up: bool = True, master: str | None = None,
         mac: str = "aa:bb:cc:dd:ee:ff", vxlan: dict | None = None, addresses: Sequence[str] = ()) -> dict:
    """One entry of `ip -d -j address show`, with the fields the plumbing reads."""
    entry: dict = {"ifname": name, "mtu": mtu, "flags": ["BROADCAST", "UP"] if up else ["BROADCAST"],
                   "address": mac, "addr_info": []}  # fmt: skip
    if master:
        entry["master"] = master
    if kind:
        entry["linkinfo"] = {"info_kind": kind, "info_data": vxlan or {}}
    for address in addresses:
        ip, prefix = address.split("/")
        entry["addr_info"].append({"family": "inet", "local": ip, "prefixlen": int(prefix)})
    entry["addr_info"].append({"family": "inet6", "local": "fe80::1", "prefixlen": 64})
    return entry


def plumbed_host_links() -> list[dict]:
    vxlan = {"id": 1000, "local": LOCAL, "port": 4789}
    return [link("lo", mtu=65536), link("eth0", mtu=1500, addresses=["127.1.0.11/16"]),
            link("vnb-1000", "bridge"), link("vnx-1000", "vxlan", master="vnb-1000", vxlan=vxlan),
            link("vnd-1000", "veth", master="vnb-1000")]  # fmt: skip


def plumbed_namespace_links() -> list[dict]:
    return [link("lo", mtu=65536), link("dhcp0", "veth", mac=DHCP_MAC, addresses=["10.0.0.2/24"])]


class RecordingRunner:
    """Answers commands from a table (unknown ones succeed silently) and records them all."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult] | None = None) -> None:
        self.answers = answers or {}
        self.ran: list[tuple[str, ...]] = []
        self.stdin: dict[tuple[str, ...], str] = {}

    async def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        self.ran.append(tuple(argv))
        if stdin is not None:
            self.stdin[tuple(argv)] = stdin
        return self.answers.get(tuple(argv), CommandResult(0, "", ""))

    def changes(self) -> list[tuple[str, ...]]:
        return [argv for argv in self.ran if not {"show", "list", "pids"} & set(argv)]


class FakeProcesses:
    """A process table: signals are recorded; SIGTERM and SIGKILL end the process."""

    def __init__(self, table: dict[int, tuple[str, ...]] | None = None) -> None:
        self.table = dict(table or {})
        self.signals: list[tuple[int, int]] = []

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        return self.table.get(pid)

    def signal(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        if signum in (signal.SIGTERM, signal.SIGKILL):
            self.table.pop(pid, None)


def ok(stdout: str) -> CommandResult:
    return CommandResult(0, stdout, "")


def plumbed_runner(state_dir: Path) -> RecordingRunner:
    """A host on which NET is fully plumbed, flooding to PEER."""
    nft_listing = f'table bridge vmflow {{\n\tchain net-1000 {{\n\t\tcomment "{cfg.nft_comment(NET)}"\n\t}}\n}}\n'
    return RecordingRunner({
        ("ip", "-d", "-j", "address", "show"): ok(json.dumps(plumbed_host_links())),
        ("ip", "-n", NS, "-d", "-j", "address", "show"): ok(json.dumps(plumbed_namespace_links())),
        ("nft", "list", "chain", "bridge", "vmflow", "net-1000"): ok(nft_listing),
        ("nft", "list", "table", "bridge", "vmflow"): ok(nft_listing),
        ("bridge", "-j", "fdb", "show", "dev", "vnx-1000"): ok(json.dumps([{"mac": cfg.ALL_ZERO_MAC, "dst": PEER}])),
        ("ip", "netns", "list"): ok(f"{NS} (id: 0)\nother\n"),
        ("ip", "netns", "pids", NS): ok("4242\n"),
    })  # fmt: skip


def empty_runner() -> RecordingRunner:
    return RecordingRunner({
        ("ip", "-d", "-j", "address", "show"): ok(json.dumps([link("lo", mtu=65536)])),
        ("nft", "list", "chain", "bridge", "vmflow", "net-1000"): CommandResult(1, "", "No such file or directory"),
        ("bridge", "-j", "fdb", "show", "dev", "vnx-1000"): ok("[]"),
        ("ip", "netns", "list"): ok(""),
    })  # fmt: skip


def plumber(state_dir: Path, runner: RecordingRunner, processes: FakeProcesses | None = None) -> NetworkPlumber:
    return NetworkPlumber("lab-h1-", LOCAL, state_dir, runner=runner, processes=processes or FakeProcesses(),
                          stop_timeout_s=0.1)  # fmt: skip


# -- pure: links, bridge, VXLAN, flooding ------------------------------------------------------------------


def test_links_are_parsed_from_ip_json() -> None:
    links = cfg.parse_links(json.dumps(plumbed_host_links()))
    assert links["vnx-1000"] == cfg.Link("vnx-1000", "vxlan", 1450, True, "vnb-1000", "aa:bb:cc:dd:ee:ff",
                                         1000, LOCAL, 4789)  # fmt: skip
    assert links["eth0"].addresses == ("127.1.0.11/16",)  # IPv4 only
    assert links["lo"].kind == "" and cfg.parse_links("") == {}


def test_bridge_is_made_without_an_address_and_left_alone_when_right() -> None:
    assert cfg.bridge_commands(NET, {}) == [
        ("ip", "link", "add", "vnb-1000", "mtu", "1450", "type", "bridge"),
        ("ip", "link", "set", "vnb-1000", "addrgenmode", "none"),
        ("ip", "link", "set", "vnb-1000", "up"),
    ]
    assert cfg.bridge_commands(NET, {"vnb-1000": cfg.Link("vnb-1000", "bridge", 1450, True)}) == []
    assert cfg.bridge_commands(NET, {"vnb-1000": cfg.Link("vnb-1000", "bridge", 1500, False)}) == [
        ("ip", "link", "set", "vnb-1000", "mtu", "1450"), ("ip", "link", "set", "vnb-1000", "up")]
    assert cfg.bridge_commands(NET, {"vnb-1000": cfg.Link("vnb-1000", "dummy")})[0] == ("ip", "link", "del", "vnb-1000")


def test_vxlan_device_is_made_again_when_its_identity_differs() -> None:
    created = cfg.vxlan_commands(NET, LOCAL, {})
    assert created == [
        ("ip", "link", "add", "vnx-1000", "mtu", "1450", "type", "vxlan", "id", "1000", "local", LOCAL,
         "dstport", "4789"),
        ("ip", "link", "set", "vnx-1000", "addrgenmode", "none"),
        ("ip", "link", "set", "vnx-1000", "master", "vnb-1000", "up"),
    ]  # fmt: skip
    right = cfg.Link("vnx-1000", "vxlan", 1450, True, "vnb-1000", vxlan_id=1000, vxlan_local=LOCAL, vxlan_port=4789)
    assert cfg.vxlan_commands(NET, LOCAL, {"vnx-1000": right}) == []
    moved = cfg.Link("vnx-1000", "vxlan", 1450, True, "vnb-1000", vxlan_id=1000, vxlan_local="127.1.0.99",
                     vxlan_port=4789)  # fmt: skip
    assert cfg.vxlan_commands(NET, LOCAL, {"vnx-1000": moved}) == [("ip", "link", "del", "vnx-1000"), *created]
    loose = cfg.Link("vnx-1000", "vxlan", 1450, False, None, vxlan_id=1000, vxlan_local=LOCAL, vxlan_port=4789)
    assert cfg.vxlan_commands(NET, LOCAL, {"vnx-1000": loose}) == [
        ("ip", "link", "set", "vnx-1000", "master", "vnb-1000", "up")]


def test_flooding_goes_to_exactly_the_peers_but_never_to_this_host() -> None:
    wanted = cfg.wanted_peers([LOCAL, PEER, "127.1.0.13"], LOCAL)
    assert wanted == {PEER, "127.1.0.13"}
    assert cfg.flood_commands("vnx-1000", [PEER, "127.1.0.99"], wanted) == [
        ("bridge", "fdb", "append", cfg.ALL_ZERO_MAC, "dev", "vnx-1000", "dst", "127.1.0.13"),
        ("bridge", "fdb", "del", cfg.ALL_ZERO_MAC, "dev", "vnx-1000", "dst", "127.1.0.99"),
    ]
    assert cfg.flood_commands("vnx-1000", wanted, wanted) == []
    with pytest.raises(InvalidRequest):
        cfg.wanted_peers(["host-b"], LOCAL)


def test_flood_peers_are_parsed_with_or_without_device_names() -> None:
    listing = [{"mac": cfg.ALL_ZERO_MAC, "ifname": "vnx-1", "dst": PEER},
               {"mac": "52:54:00:00:00:01", "ifname": "vnx-1", "dst": "127.1.0.13"},
               {"mac": cfg.ALL_ZERO_MAC, "ifname": "vnb-1"}]  # fmt: skip
    assert cfg.parse_flood_peers(json.dumps(listing)) == {"vnx-1": {PEER}}
    assert cfg.parse_flood_peers(json.dumps([{"mac": cfg.ALL_ZERO_MAC, "dst": PEER}]), "vnx-2") == {"vnx-2": {PEER}}


# -- pure: the DHCP port --------------------------------------------------------------------------------------


def test_dhcp_namespace_and_veth_are_made_with_the_networks_address_and_mac() -> None:
    assert cfg.dhcp_port_commands(NET, NS, {}, None) == [
        ("ip", "netns", "add", NS),
        ("ip", "-n", NS, "link", "set", "lo", "up"),
        ("ip", "link", "add", "vnd-1000", "mtu", "1450", "type", "veth", "peer", "name", "dhcp0", "mtu", "1450",
         "address", DHCP_MAC, "netns", NS),
        ("ip", "link", "set", "vnd-1000", "addrgenmode", "none"),
        ("ip", "-n", NS, "link", "set", "dhcp0", "addrgenmode", "none"),
        ("ip", "-n", NS, "address", "add", "10.0.0.2/24", "dev", "dhcp0"),
        ("ip", "-n", NS, "link", "set", "dhcp0", "up"),
        ("ip", "link", "set", "vnd-1000", "master", "vnb-1000", "up"),
    ]  # fmt: skip


def test_dhcp_port_is_corrected_in_place() -> None:
    host = cfg.parse_links(json.dumps(plumbed_host_links()))
    inside = cfg.parse_links(json.dumps(plumbed_namespace_links()))
    assert cfg.dhcp_port_commands(NET, NS, host, inside) == []
    stale = {"dhcp0": cfg.Link("dhcp0", "veth", 1450, True, mac=DHCP_MAC, addresses=("10.0.0.3/24",))}
    assert cfg.dhcp_port_commands(NET, NS, host, stale) == [
        ("ip", "-n", NS, "address", "del", "10.0.0.3/24", "dev", "dhcp0"),
        ("ip", "-n", NS, "address", "add", "10.0.0.2/24", "dev", "dhcp0"),
    ]
    # the namespace lost its end of the veth: the host's end goes, a new pair comes
    assert cfg.dhcp_port_commands(NET, NS, host, {})[:2] == [
        ("ip", "link", "del", "vnd-1000"), ("ip", "link", "add", "vnd-1000", "mtu", "1450", "type", "veth", "peer",
                                            "name", "dhcp0", "mtu", "1450", "address", DHCP_MAC, "netns", NS)]


# -- pure: nftables -------------------------------------------------------------------------------------------


def test_nft_rules_keep_dhcp_and_the_dhcp_mac_off_the_vxlan_port_both_ways() -> None:
    script = cfg.nft_ensure_script(NET, chain_exists=False)
    head = "add rule bridge vmflow net-1000"
    assert script == (
        "add table bridge vmflow\n"
        "add chain bridge vmflow net-1000 { type filter hook forward priority 0; policy accept; "
        f'comment "{cfg.nft_comment(NET)}"; }}\n'
        f'{head} iifname "vnx-1000" udp dport {{ 67, 68 }} counter drop\n'
        f'{head} iifname "vnx-1000" ether saddr {DHCP_MAC} counter drop\n'
        f'{head} iifname "vnx-1000" ether daddr {DHCP_MAC} counter drop\n'
        f'{head} oifname "vnx-1000" udp dport {{ 67, 68 }} counter drop\n'
        f'{head} oifname "vnx-1000" ether saddr {DHCP_MAC} counter drop\n'
        f'{head} oifname "vnx-1000" ether daddr {DHCP_MAC} counter drop\n'
    )
    replaced = cfg.nft_ensure_script(NET, chain_exists=True).splitlines()
    assert replaced[1:3] == ["flush chain bridge vmflow net-1000", "delete chain bridge vmflow net-1000"]


def test_a_network_without_dhcp_keeps_an_empty_chain() -> None:
    bare = NetworkPlumbing("n2", 1001, "10.0.0.0/24")
    assert cfg.nft_rules(bare) == [] and "add rule" not in cfg.nft_ensure_script(bare, False)
    assert cfg.nft_comment(bare) != cfg.nft_comment(NetworkPlumbing("n2", 1001, "10.0.0.0/24", None, "10.0.0.1",
                                                                    DHCP_MAC))  # fmt: skip


def test_chain_is_current_only_with_the_comment_of_its_rules() -> None:
    listing = f'table bridge vmflow {{\n\tchain net-1000 {{\n\t\tcomment "{cfg.nft_comment(NET)}"\n'
    assert cfg.nft_chain_is_current(listing, NET)
    other_mac = NetworkPlumbing(**{**NET.__dict__, "dhcp_mac": "52:54:00:d0:00:02"})
    assert not cfg.nft_chain_is_current(listing, other_mac)


def test_removing_the_last_chain_removes_the_table() -> None:
    both = "table bridge vmflow {\n\tchain net-1000 {\n\t}\n\n\tchain net-1001 {\n\t}\n}\n"
    assert cfg.nft_chains(both) == {"net-1000", "net-1001"}
    assert cfg.nft_remove_script(1000, both) == (
        "flush chain bridge vmflow net-1000\ndelete chain bridge vmflow net-1000\n")
    assert cfg.nft_remove_script(1000, "table bridge vmflow {\n\tchain net-1000 {\n\t}\n}\n") == (
        "delete table bridge vmflow\n")
    assert cfg.nft_remove_script(1002, both) == ""


# -- pure: dnsmasq ---------------------------------------------------------------------------------------------


def test_dnsmasq_serves_static_entries_only_on_dhcp0() -> None:
    files = cfg.dnsmasq_files(Path("/var/lib/vmflow/net"), 1000)
    assert cfg.dnsmasq_argv(NET, files) == (
        "dnsmasq", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts", "--bind-interfaces",
        "--interface=dhcp0", "--except-interface=lo", "--dhcp-range=10.0.0.0,static,255.255.255.0,1h",
        "--dhcp-hostsfile=/var/lib/vmflow/net/dhcp-1000.hosts", "--dhcp-authoritative",
        "--dhcp-option=option:router,10.0.0.1", "--dhcp-option=option:dns-server", "--dhcp-option=option:mtu,1450",
        "--dhcp-leasefile=/var/lib/vmflow/net/dhcp-1000.leases", "--pid-file=/var/lib/vmflow/net/dhcp-1000.pid",
        "--log-facility=/var/lib/vmflow/net/dhcp-1000.log",
    )  # fmt: skip
    no_gateway = NetworkPlumbing(**{**NET.__dict__, "gateway": None, "mtu": 1400})
    argv = cfg.dnsmasq_argv(no_gateway, files)
    assert "--dhcp-option=option:router" in argv and "--dhcp-option=option:mtu,1400" in argv


def test_hosts_file_is_sorted_and_drops_names_dhcp_cannot_carry() -> None:
    hosts = (*NET.hosts, DhcpHost("52:54:00:00:00:0c", "10.0.0.12", "bad name,x"))
    assert cfg.hosts_file_text(hosts) == (
        "52:54:00:00:00:0a,10.0.0.10\n52:54:00:00:00:0b,10.0.0.11,web-1\n52:54:00:00:00:0c,10.0.0.12\n")
    assert cfg.hosts_file_text(()) == ""


def test_macs_in_any_case_give_the_same_plumbing() -> None:
    upper = NetworkPlumbing(**{**NET.__dict__, "dhcp_mac": DHCP_MAC.upper(),
                               "hosts": tuple(DhcpHost(h.mac.upper(), h.ip, h.hostname) for h in NET.hosts)})
    cfg.check_plumbing(upper)
    assert cfg.nft_ensure_script(upper, False) == cfg.nft_ensure_script(NET, False)
    assert cfg.hosts_file_text(upper.hosts) == cfg.hosts_file_text(NET.hosts)
    inside = cfg.parse_links(json.dumps(plumbed_namespace_links()))
    host = cfg.parse_links(json.dumps(plumbed_host_links()))
    assert cfg.dhcp_port_commands(upper, NS, host, inside) == []


def test_a_dnsmasq_is_recognised_by_its_pid_file() -> None:
    files = cfg.dnsmasq_files(Path("/s"), 1000)
    assert cfg.is_dnsmasq_of(("dnsmasq", "--pid-file=/s/dhcp-1000.pid"), files)
    assert not cfg.is_dnsmasq_of(("dnsmasq", "--pid-file=/s/dhcp-1001.pid"), files)
    assert not cfg.is_dnsmasq_of(("sleep", "--pid-file=/s/dhcp-1000.pid"), files)
    assert not cfg.is_dnsmasq_of(None, files)


@pytest.mark.parametrize("change", [
    {"dhcp_mac": "52:54:00:d0:00"}, {"dhcp_mac": None}, {"dhcp_address": "10.9.0.2"}, {"mtu": 20},
    {"hosts": (DhcpHost("52:54:00:00:00:0a,", "10.0.0.10"),)}, {"hosts": (DhcpHost("52:54:00:00:00:0a", "10.1.0.1"),)},
    {"cidr": "10.0.0.0/33"}, {"vni": 0},
])  # fmt: skip
def test_values_that_cannot_be_plumbed_are_refused(change: dict) -> None:
    with pytest.raises(InvalidRequest):
        cfg.check_plumbing(NetworkPlumbing(**{**NET.__dict__, **change}))


# -- NetworkPlumber on a recording runner -----------------------------------------------------------------------


async def test_ensure_on_an_empty_host_builds_everything_in_order(tmp_path: Path) -> None:
    runner = empty_runner()
    await plumber(tmp_path, runner).ensure(NET, [LOCAL, PEER])
    files = cfg.dnsmasq_files(tmp_path, 1000)
    assert runner.changes() == [
        *cfg.bridge_commands(NET, {}),
        ("nft", "-f", "-"),  # after the bridge, before any port joins it
        *cfg.vxlan_commands(NET, LOCAL, {}),
        *cfg.flood_commands("vnx-1000", [], [PEER]),
        *cfg.dhcp_port_commands(NET, NS, {}, None),
        ("ip", "netns", "exec", NS, *cfg.dnsmasq_argv(NET, files)),
    ]
    assert runner.stdin[("nft", "-f", "-")] == cfg.nft_ensure_script(NET, chain_exists=False)
    assert files.hosts.read_text() == cfg.hosts_file_text(NET.hosts)
    assert files.hosts.stat().st_mode & 0o777 == 0o644  # dnsmasq re-reads it as nobody


async def test_ensure_on_a_plumbed_host_only_reads(tmp_path: Path) -> None:
    files = cfg.dnsmasq_files(tmp_path, 1000)
    files.hosts.write_text(cfg.hosts_file_text(NET.hosts))
    files.pid.write_text("4242\n")
    processes = FakeProcesses({4242: cfg.dnsmasq_argv(NET, files)})
    runner = plumbed_runner(tmp_path)
    await plumber(tmp_path, runner, processes).ensure(NET, [PEER, LOCAL])
    assert runner.changes() == [] and processes.signals == []


async def test_new_entries_reach_a_running_dnsmasq_by_sighup(tmp_path: Path) -> None:
    files = cfg.dnsmasq_files(tmp_path, 1000)
    files.hosts.write_text("52:54:00:00:00:0a,10.0.0.10\n")
    files.pid.write_text("4242\n")
    processes = FakeProcesses({4242: cfg.dnsmasq_argv(NET, files)})
    runner = plumbed_runner(tmp_path)
    await plumber(tmp_path, runner, processes).ensure(NET, [PEER])
    assert files.hosts.read_text() == cfg.hosts_file_text(NET.hosts)
    assert processes.signals == [(4242, signal.SIGHUP)] and runner.changes() == []


async def test_a_dnsmasq_with_other_options_is_replaced(tmp_path: Path) -> None:
    files = cfg.dnsmasq_files(tmp_path, 1000)
    files.hosts.write_text(cfg.hosts_file_text(NET.hosts))
    files.pid.write_text("4242\n")
    old = NetworkPlumbing(**{**NET.__dict__, "gateway": None})
    processes = FakeProcesses({4242: cfg.dnsmasq_argv(old, files)})
    runner = plumbed_runner(tmp_path)
    await plumber(tmp_path, runner, processes).ensure(NET, [PEER])
    assert processes.signals == [(4242, signal.SIGTERM)]
    assert runner.changes() == [("ip", "netns", "exec", NS, *cfg.dnsmasq_argv(NET, files))]


async def test_remove_stops_dnsmasq_and_deletes_everything(tmp_path: Path) -> None:
    files = cfg.dnsmasq_files(tmp_path, 1000)
    for path in files.all():
        path.write_text("4242\n")
    processes = FakeProcesses({4242: cfg.dnsmasq_argv(NET, files), 4243: ("sleep", "9")})
    runner = plumbed_runner(tmp_path)
    runner.answers[("ip", "netns", "pids", NS)] = ok("4242\n4243\n")  # not a dnsmasq: left alone
    await plumber(tmp_path, runner, processes).remove(1000)
    assert processes.signals == [(4242, signal.SIGTERM)]
    assert runner.changes() == [
        ("ip", "link", "del", "vnd-1000"), ("ip", "netns", "del", NS),
        ("ip", "link", "del", "vnx-1000"), ("ip", "link", "del", "vnb-1000"), ("nft", "-f", "-"),
    ]
    assert runner.stdin[("nft", "-f", "-")] == "delete table bridge vmflow\n"
    assert list(tmp_path.iterdir()) == []


async def test_remove_of_an_absent_network_changes_nothing(tmp_path: Path) -> None:
    runner = empty_runner()
    runner.answers[("nft", "list", "table", "bridge", "vmflow")] = CommandResult(1, "", "No such file or directory")
    await plumber(tmp_path, runner).remove(1000)
    assert runner.changes() == []


async def test_a_dnsmasq_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    class Stubborn(FakeProcesses):
        def signal(self, pid: int, signum: int) -> None:
            self.signals.append((pid, signum))
            if signum == signal.SIGKILL:
                self.table.pop(pid, None)

    files = cfg.dnsmasq_files(tmp_path, 1000)
    files.pid.write_text("4242\n")
    processes = Stubborn({4242: cfg.dnsmasq_argv(NET, files)})
    await plumber(tmp_path, plumbed_runner(tmp_path), processes).remove(1000)
    assert processes.signals == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]


async def test_present_names_the_vnis_with_a_bridge(tmp_path: Path) -> None:
    links = [*plumbed_host_links(), link("vnb-77", "bridge"), link("vnb-x1", "bridge"), link("vnb-5", "dummy")]
    runner = RecordingRunner({("ip", "-d", "-j", "address", "show"): ok(json.dumps(links))})
    assert await plumber(tmp_path, runner).present() == {1000, 77}


async def test_sync_peers_rewrites_every_vxlan_devices_flooding(tmp_path: Path) -> None:
    vxlan = {"id": 1001, "local": LOCAL, "port": 4789}
    links = [*plumbed_host_links(), link("vnx-1001", "vxlan", vxlan=vxlan)]
    fdb = [{"mac": cfg.ALL_ZERO_MAC, "ifname": "vnx-1000", "dst": PEER},
           {"mac": cfg.ALL_ZERO_MAC, "ifname": "vnx-1001", "dst": "127.1.0.99"}]  # fmt: skip
    runner = RecordingRunner({("ip", "-d", "-j", "address", "show"): ok(json.dumps(links)),
                              ("bridge", "-j", "fdb", "show"): ok(json.dumps(fdb))})  # fmt: skip
    await plumber(tmp_path, runner).sync_peers([LOCAL, PEER])
    assert runner.changes() == [
        ("bridge", "fdb", "append", cfg.ALL_ZERO_MAC, "dev", "vnx-1001", "dst", PEER),
        ("bridge", "fdb", "del", cfg.ALL_ZERO_MAC, "dev", "vnx-1001", "dst", "127.1.0.99"),
    ]


async def test_a_failed_command_is_a_network_error_naming_it(tmp_path: Path) -> None:
    runner = empty_runner()
    runner.answers[("ip", "link", "add", "vnb-1000", "mtu", "1450", "type", "bridge")] = CommandResult(
        2, "", "RTNETLINK answers: Operation not permitted\n")
    with pytest.raises(NetworkError) as raised:
        await plumber(tmp_path, runner).ensure(NET, [PEER])
    assert raised.value.code == "network_error"
    assert raised.value.message == ("network plumbing: `ip link add vnb-1000 mtu 1450 type bridge` failed (exit 2): "
                                    "RTNETLINK answers: Operation not permitted")  # fmt: skip
