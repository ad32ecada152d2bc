"""Network plumbing (services/host_worker/plumbing.py) on real namespaces, without libvirt or the
vmflow stack: two simulated hosts on an underlay switch, each running NetworkPlumber inside its
own network namespace (a helper process entered with nsenter); a "VM" is one more namespace
whose eth0 is a veth into a host's bridge; busybox's udhcpc and ping are the guests' tools.

Needs root, iproute2, nftables, dnsmasq-base and busybox (deploy/install.sh installs them): a
missing tool fails the test instead of skipping it. Names carry this process's id, so a lab
(`vmflow up`) may run beside it; everything is removed afterwards, even when a check fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"vmflowt{os.getpid() % 100000}-"
TOOLS = ("ip", "bridge", "nft", "dnsmasq", "busybox", "nsenter")
UNDERLAY = {"A": "127.1.0.11", "B": "127.1.0.12"}
PEERS = list(UNDERLAY.values())
CIDR = "10.10.0.0/24"  # both networks: the same subnet, isolated all the same
READ_WORDS = {"show", "list", "pids"}  # every command that only reads has one of them

# Runs NetworkPlumber inside the namespace it is started in: a list of operations in, one JSON
# line out with, per operation, the commands it ran and how long it took.
HELPER = """
import asyncio, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from services.host_worker.plumbing import NetworkPlumber, run_command
from shared.networks import DhcpHost, NetworkPlumbing

request = json.loads(sys.argv[1])
ran = []

async def recording(argv, stdin=None):
    ran.append(list(argv))
    return await run_command(argv, stdin)

async def main():
    plumber = NetworkPlumber(request["prefix"], request["local"], Path(request["state_dir"]), runner=recording)
    results = []
    for op in request["ops"]:
        ran.clear()
        started = time.monotonic()
        if op["op"] == "ensure":
            net = dict(op["net"], hosts=tuple(DhcpHost(**h) for h in op["net"]["hosts"]))
            await plumber.ensure(NetworkPlumbing(**net), op["peers"])
        elif op["op"] == "remove":
            await plumber.remove(op["vni"])
        elif op["op"] == "sync_peers":
            await plumber.sync_peers(op["peers"])
        elapsed_ms = (time.monotonic() - started) * 1000
        results.append({"op": op["op"], "elapsed_ms": elapsed_ms, "commands": list(ran),
                        "present": sorted(await plumber.present())})
    print(json.dumps(results))

asyncio.run(main())
"""

DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    echo "lease ip=$ip mask=$mask router=$router mtu=$mtu dns=$dns"
    ip address add "$ip/$mask" dev "$interface"
    ;;
esac
"""


@dataclass(frozen=True)
class Vm:
    name: str
    host: str  # "A" or "B"
    vni: int
    mac: str
    ip: str

    @property
    def namespace(self) -> str:
        return f"{PREFIX}vm-{self.name}"


A1 = Vm("a1", "A", 1000, "52:54:00:00:0a:01", "10.10.0.11")
B1 = Vm("b1", "B", 1000, "52:54:00:00:0b:01", "10.10.0.12")
A3 = Vm("a3", "A", 1000, "52:54:00:00:0a:03", "10.10.0.15")  # added to DHCP while dnsmasq runs
A2 = Vm("a2", "A", 1001, "52:54:00:00:0a:02", "10.10.0.13")
B2 = Vm("b2", "B", 1001, "52:54:00:00:0b:02", "10.10.0.14")


def _host(vm: Vm) -> dict:
    return {"mac": vm.mac, "ip": vm.ip, "hostname": vm.name}


def net_one(*vms: Vm) -> dict:
    return {"network_id": "net-one", "vni": 1000, "cidr": CIDR, "gateway": "10.10.0.1",
            "dhcp_address": "10.10.0.2", "dhcp_mac": "52:54:00:d0:00:01", "hosts": [_host(v) for v in vms]}


def net_two() -> dict:
    # a1's MAC has another address here: were the networks joined, a1 could be offered .99.
    decoy = {"mac": A1.mac, "ip": "10.10.0.99", "hostname": "decoy"}
    return {"network_id": "net-two", "vni": 1001, "cidr": CIDR, "gateway": None,
            "dhcp_address": "10.10.0.2", "dhcp_mac": "52:54:00:d0:00:02",
            "hosts": [_host(A2), _host(B2), decoy]}


# -- helpers ---------------------------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True, stdin: str | None = None, timeout_s: float = 30) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def in_ns(namespace: str, *argv: str, check: bool = True, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", namespace, *argv, check=check, timeout_s=timeout_s)


@dataclass
class Fabric:
    state_root: Path
    script: Path

    def host_ns(self, host: str) -> str:
        return f"{PREFIX}h{host}"

    def dhcp_prefix(self, host: str) -> str:
        return f"{PREFIX}h{host}-"

    def state_dir(self, host: str) -> Path:
        return self.state_root / host

    def plumb(self, host: str, *ops: dict) -> list[dict]:
        """Runs NetworkPlumber operations inside the host's network namespace (nsenter --net:
        the root's mount namespace stays, so the DHCP namespaces it adds are seen by all)."""
        request = {"prefix": self.dhcp_prefix(host), "local": UNDERLAY[host],
                   "state_dir": str(self.state_dir(host)), "ops": list(ops)}
        done = sh("nsenter", f"--net=/run/netns/{self.host_ns(host)}", sys.executable, "-c", HELPER,
                  json.dumps(request), str(REPO), check=False, timeout_s=60)
        assert done.returncode == 0, f"plumbing on host {host} failed:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def dhcp(self, vm: Vm, tries: int = 5) -> dict | None:
        """The lease the VM's udhcpc got (the script's variables), or None."""
        done = in_ns(vm.namespace, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(tries), "-T", "1",
                     "-O", "mtu", "-s", str(self.script), check=False, timeout_s=tries * 3 + 10)
        for line in done.stdout.splitlines():
            if line.startswith("lease "):
                return dict(part.split("=", 1) for part in line.split()[1:])
        return None

    def pings(self, vm: Vm, ip: str) -> bool:
        return in_ns(vm.namespace, "busybox", "ping", "-c", "2", "-W", "2", ip, check=False).returncode == 0

    def add_vm(self, vm: Vm) -> None:
        tap = f"t-{vm.name}"
        sh("ip", "netns", "add", vm.namespace)
        sh("ip", "-n", self.host_ns(vm.host), "link", "add", tap, "mtu", "1450", "type", "veth", "peer", "name",
           "eth0", "address", vm.mac, "mtu", "1450", "netns", vm.namespace)
        sh("ip", "-n", self.host_ns(vm.host), "link", "set", tap, "master", f"vnb-{vm.vni}", "up")
        sh("ip", "-n", vm.namespace, "link", "set", "eth0", "up")

    def dnsmasq_pid(self, host: str, vni: int) -> int:
        pid = int((self.state_dir(host) / f"dhcp-{vni}.pid").read_text())
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
        return pid


def _our_namespaces() -> list[str]:
    listed = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def _our_dnsmasqs(state_root: Path) -> list[int]:
    """dnsmasq processes this test started: their pid file is under its state folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("dnsmasq\0") and f"--pid-file={state_root}/" in cmdline:
                pids.append(int(proc.name))
    return pids


def _build_underlay(fabric: Fabric) -> None:
    switch = f"{PREFIX}sw"
    sh("ip", "netns", "add", switch)
    sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "br0", "up")
    for host, address in UNDERLAY.items():
        namespace = fabric.host_ns(host)
        sh("ip", "netns", "add", namespace)
        sh("ip", "-n", namespace, "-batch", "-", stdin="\n".join([
            "link set lo up", "address del 127.0.0.1/8 dev lo", "address add 127.0.0.1/32 dev lo",
            f"link add eth0 type veth peer name u{host} netns {switch}",
            f"address add {address}/16 dev eth0", "link set eth0 up",
        ]) + "\n")  # fmt: skip
        in_ns(namespace, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1",
              "net.ipv4.conf.eth0.route_localnet=1")
        sh("ip", "-n", switch, "link", "set", f"u{host}", "master", "br0", "up")


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"missing {missing}: run deploy/install.sh"
    state_root = Path(tempfile.mkdtemp(prefix=PREFIX))
    state_root.chmod(0o755)  # dnsmasq re-reads its hosts file as nobody
    script = state_root / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    try:
        the_fabric = Fabric(state_root, script)
        _build_underlay(the_fabric)
        yield the_fabric
    finally:
        for pid in _our_dnsmasqs(state_root):
            os.kill(pid, signal.SIGKILL)
        for namespace in _our_namespaces():
            sh("ip", "netns", "del", namespace, check=False)
        shutil.rmtree(state_root, ignore_errors=True)


# -- the scenario ------------------------------------------------------------------------------------------------


def _only_reads(result: dict) -> bool:
    return all(READ_WORDS & set(argv) for argv in result["commands"])


def _dhcp_drops(fabric: Fabric, host: str, vni: int) -> int:
    """Packets the network's chain dropped for being DHCP, leaving through the VXLAN port."""
    listing = in_ns(fabric.host_ns(host), "nft", "list", "chain", "bridge", "vmflow", f"net-{vni}").stdout
    found = re.search(rf'oifname "vnx-{vni}" udp dport {{ 67, 68 }} counter packets (\d+)', listing)
    assert found, listing
    return int(found.group(1))


def _wait_gone(pid: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.02)


def _flood_peers(fabric: Fabric, host: str) -> dict[str, set[str]]:
    entries = json.loads(in_ns(fabric.host_ns(host), "bridge", "-j", "fdb", "show").stdout)
    peers: dict[str, set[str]] = {}
    for entry in entries:
        if entry.get("mac") == "00:00:00:00:00:00" and "dst" in entry:
            peers.setdefault(entry["ifname"], set()).add(entry["dst"])
    return peers


def test_networks_across_two_hosts(fabric: Fabric) -> None:
    timings: dict[str, list[float]] = {}
    for host in UNDERLAY:
        first, again, two = fabric.plumb(
            host,
            {"op": "ensure", "net": net_one(A1, B1), "peers": PEERS},
            {"op": "ensure", "net": net_one(A1, B1), "peers": PEERS},
            {"op": "ensure", "net": net_two(), "peers": PEERS},
        )
        # (f) the second ensure with the same input only reads
        assert len(first["commands"]) > 10 and _only_reads(again), again["commands"]
        assert again["present"] == [1000] and two["present"] == [1000, 1001]
        timings.setdefault("ensure_first_ms", []).append(first["elapsed_ms"])
        timings.setdefault("ensure_again_ms", []).append(again["elapsed_ms"])
    for vm in (A1, B1, A2, B2, A3):
        fabric.add_vm(vm)

    # (a) a VM gets exactly its address, the gateway and the overlay MTU
    lease = fabric.dhcp(A1)
    assert lease is not None
    assert (lease["ip"], lease["mask"], lease["router"], lease["mtu"]) == (A1.ip, "24", "10.10.0.1", "1450")
    assert lease["dns"] == ""  # DNS is off: dnsmasq must not name itself

    # (d) DHCP stays on its host: with host B's server stopped, b1 gets nothing although host A's
    # server knows its MAC; B's rules dropped the requests and A's server never saw them
    pid_b = fabric.dnsmasq_pid("B", 1000)
    os.kill(pid_b, signal.SIGTERM)
    _wait_gone(pid_b)
    drops_before = _dhcp_drops(fabric, "B", 1000)
    assert fabric.dhcp(B1, tries=3) is None
    assert _dhcp_drops(fabric, "B", 1000) > drops_before
    assert B1.mac not in (fabric.state_dir("A") / "dhcp-1000.log").read_text()
    # ensure notices the dead dnsmasq and starts it again
    restarted = fabric.plumb("B", {"op": "ensure", "net": net_one(A1, B1), "peers": PEERS})[0]
    assert any("dnsmasq" in argv for argv in restarted["commands"])
    assert fabric.dnsmasq_pid("B", 1000) != pid_b
    assert (fabric.dhcp(B1) or {}).get("ip") == B1.ip

    # (b) VMs of one network on two hosts reach each other
    assert fabric.pings(A1, B1.ip) and fabric.pings(B1, A1.ip)

    # (c) the second network, same subnet: its own DHCP answers (no router), its VMs reach each
    # other across hosts, and nothing of the first network
    lease_a2 = fabric.dhcp(A2)
    assert lease_a2 is not None and (lease_a2["ip"], lease_a2["router"]) == (A2.ip, "")
    assert (fabric.dhcp(B2) or {}).get("ip") == B2.ip
    assert fabric.pings(B2, A2.ip)
    assert not fabric.pings(A2, A1.ip) and not fabric.pings(A2, B1.ip)

    # a new port's entry reaches the running dnsmasq (rewritten hosts file, SIGHUP, same pid)
    pid_a = fabric.dnsmasq_pid("A", 1000)
    added = fabric.plumb("A", {"op": "ensure", "net": net_one(A1, B1, A3), "peers": PEERS})[0]
    assert not any("dnsmasq" in argv for argv in added["commands"]) and fabric.dnsmasq_pid("A", 1000) == pid_a
    assert (fabric.dhcp(A3) or {}).get("ip") == A3.ip

    # peers follow the fleet: added and dropped on every VXLAN device, never this host itself
    fabric.plumb("A", {"op": "sync_peers", "peers": [*PEERS, "127.1.0.99"]})
    assert _flood_peers(fabric, "A") == {"vnx-1000": {"127.1.0.12", "127.1.0.99"},
                                         "vnx-1001": {"127.1.0.12", "127.1.0.99"}}
    fabric.plumb("A", {"op": "sync_peers", "peers": PEERS})
    assert _flood_peers(fabric, "A") == {"vnx-1000": {"127.1.0.12"}, "vnx-1001": {"127.1.0.12"}}
    assert fabric.pings(A1, B1.ip)

    # (e) remove leaves nothing: links, namespaces, processes, rules, files; a repeat is a no-op
    for host in UNDERLAY:
        removed = fabric.plumb(host, {"op": "remove", "vni": 1000}, {"op": "remove", "vni": 1001},
                               {"op": "remove", "vni": 1000})
        assert removed[-1]["present"] == [] and _only_reads(removed[-1]), removed[-1]["commands"]
        timings.setdefault("remove_ms", []).extend(r["elapsed_ms"] for r in removed[:2])
        links = json.loads(sh("ip", "-n", fabric.host_ns(host), "-j", "link", "show").stdout)
        assert not [link["ifname"] for link in links if link["ifname"].startswith(("vnb-", "vnx-", "vnd-"))]
        assert "vmflow" not in in_ns(fabric.host_ns(host), "nft", "list", "ruleset").stdout
        assert list(fabric.state_dir(host).iterdir()) == []
    assert not [n for n in _our_namespaces() if "-dhcp-" in n]
    assert _our_dnsmasqs(fabric.state_root) == []
    print("timings (ms):", {k: [round(v, 1) for v in vs] for k, vs in timings.items()})
