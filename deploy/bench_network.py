"""Network throughput and latency: two guests on different hosts talking through the overlay
(bridge, VXLAN, bridge), next to the same two hosts talking directly over their link, same run.
A third path takes the emulated guests out of the figures: two network namespaces plugged into
the same two bridges, talking through the same overlay at kernel speed (what the overlay itself
costs, next to the direct link).

Per trial, interleaved so both see the same machine noise:
- round trip: 20 pings 0.2 s apart, guest to guest (typed into the guest's console) and host to
  host (busybox ping in the host's network namespace); p50 of the answers' times;
- TCP throughput: MIB_PER_TRANSFER MiB of zeros piped into nc, guest to guest (the lab guest's
  listener on port 5001) and host to host (a listener started in the peer's namespace).
The guests are TCG-emulated, so their absolute figures are far below the hosts'; the ratio says
what the path costs. The VMs and the network are deleted afterwards, whatever happened.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from statistics import median

from deploy import lab
from deploy.bench import BenchError, _running_stack
from deploy.client import VmflowClient
from deploy.console_driver import ConsoleDriver

PINGS = 20
MIB_PER_TRANSFER = 8
GUEST_LISTEN_PORT = 5001
HOST_LISTEN_PORT = 5002
_PING_TIME = re.compile(r"time=([\d.]+) ms")
_REAL_TIME = re.compile(r"real\s+(\d+)m\s*([\d.]+)s")  # busybox time


@dataclass(frozen=True)
class PathFigures:
    rtt_ms: list[float]
    throughput_mib_s: list[float]


def _ping_times(output: str) -> list[float]:
    return [float(t) for t in _PING_TIME.findall(output)]


def _guest_rtt(console: ConsoleDriver, peer_ip: str) -> list[float]:
    return _ping_times(console.run(f"ping -c {PINGS} -i 0.2 {peer_ip}", timeout_s=PINGS * 0.2 + 30))


def _guest_throughput(console: ConsoleDriver, peer_ip: str) -> float:
    """MiB/s of a TCP transfer from this guest to the peer's listener, timed inside the guest
    (busybox time), so the console's own latency is not counted."""
    transfer = f"dd if=/dev/zero bs=64k count={MIB_PER_TRANSFER * 16} 2>/dev/null | nc {peer_ip} {GUEST_LISTEN_PORT}"
    out = console.run(f'time sh -c "{transfer}"', timeout_s=180)
    found = _REAL_TIME.search(out)
    if not found:
        raise BenchError(f"no transfer time in the guest's answer: {out[-300:]!r}")
    seconds = int(found.group(1)) * 60 + float(found.group(2))
    return MIB_PER_TRANSFER / max(seconds, 1e-6)


def _in_host(namespace: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, **kwargs)


def _host_rtt(source_ns: str, target_address: str) -> list[float]:
    out = _in_host(source_ns, "busybox", "ping", "-c", str(PINGS), "-i", "0.2", target_address,
                   timeout=PINGS * 0.2 + 30).stdout
    return _ping_times(out)


def _host_throughput(source_ns: str, target_ns: str, target_address: str) -> float:
    listener = subprocess.Popen(["ip", "netns", "exec", target_ns, "busybox", "nc", "-l", "-p",
                                 str(HOST_LISTEN_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        _in_host(source_ns, "sh", "-c", f"busybox dd if=/dev/zero bs=64k count={MIB_PER_TRANSFER * 16} "
                 f"2>/dev/null | busybox nc {target_address} {HOST_LISTEN_PORT}", timeout=60, check=True)
        return MIB_PER_TRANSFER / (time.perf_counter() - started)
    finally:
        listener.kill()
        listener.wait(5)


def _plug_endpoint(host: lab.LabHost, vni: int, address: str, mtu: int) -> str:
    """A network namespace plugged into the network's bridge on ``host``, with ``address``:
    a kernel-speed stand-in for a guest. Named after the host, so the lab's teardown removes it
    too. Returns the namespace."""
    namespace = f"{host.namespace}-bench"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    commands = [
        ["ip", "-n", host.namespace, "link", "add", "vbench", "mtu", str(mtu), "type", "veth", "peer", "name",
         "eth0", "mtu", str(mtu), "netns", namespace],
        ["ip", "-n", host.namespace, "link", "set", "vbench", "master", f"vnb-{vni}", "up"],
        ["ip", "-n", namespace, "address", "add", address, "dev", "eth0"],
        ["ip", "-n", namespace, "link", "set", "eth0", "up"],
        ["ip", "-n", namespace, "link", "set", "lo", "up"],
    ]
    for argv in commands:
        subprocess.run(argv, check=True, capture_output=True)
    return namespace


def _unplug_endpoint(namespace: str) -> None:
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # its veth goes with it


def _create_pair(client: VmflowClient, say) -> tuple[dict, list[dict], dict]:
    suffix = uuid.uuid4().hex[:6]
    accepted = client.call("POST", "/v1/networks", json={"name": f"bench-{suffix}", "cidr": "10.99.0.0/24"})
    network = client.call("GET", f"/v1/networks/{accepted['target']}")
    group = client.call("POST", "/v1/placement-groups", json={"name": f"bench-{suffix}", "policy": "anti-affinity"})
    made = [client.create_vm(f"bench-net-{i}-{suffix}", 1, 128, 1, "lab-guest", hostname=f"bench{i}",
                             networks=[{"network_id": network["id"]}], placement_group_id=group["id"])
            for i in (1, 2)]
    vms = []
    for accepted_vm in made:
        op = client.wait_operation(accepted_vm["operation_id"], timeout_s=240)
        if op["state"] != "succeeded":
            raise BenchError(f"provisioning failed: {op['error']}")
        vms.append(client.call("GET", f"/v1/vms/{accepted_vm['vm']['id']}"))
    say(f"guests {vms[0]['name']} on {vms[0]['host_id']} and {vms[1]['name']} on {vms[1]['host_id']}, "
        f"network {network['cidr']} (VNI {network['vni']})")
    return network, vms, group


def _remove(client: VmflowClient, network: dict | None, vms: list[dict], group: dict | None) -> None:
    for vm in vms:
        client.wait_operation(client.call("DELETE", f"/v1/vms/{vm['id']}")["operation_id"], timeout_s=120)
    if network:
        client.wait_operation(client.call("DELETE", f"/v1/networks/{network['id']}")["operation_id"], timeout_s=60)
    if group:
        client.call("DELETE", f"/v1/placement-groups/{group['id']}")


def _wait_addressed(console: ConsoleDriver, ip: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f"inet {ip}/" in console.run("ip -4 -o addr show eth0", timeout_s=20):
            return
        time.sleep(1)
    raise BenchError(f"the guest never got {ip}")


def run_network_bench(run_dir, count: int, say=print, token: str | None = None) -> tuple[PathFigures, PathFigures]:
    """``token``: the API token that makes the network and guests and opens a console (a
    member's at least)."""
    cfg = _running_stack(run_dir)
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    hosts = {h.host_id: h for h in the_lab.hosts}
    client = VmflowClient(cfg.api_url, token)
    network, vms, group = None, [], None
    overlay, native, direct = PathFigures([], []), PathFigures([], []), PathFigures([], [])
    endpoints: list[str] = []
    try:
        network, vms, group = _create_pair(client, say)
        source, target = hosts[vms[0]["host_id"]], hosts[vms[1]["host_id"]]
        peer_ip = vms[1]["nics"][0]["ip"]
        # Addresses the network's IPAM never hands out in this run (two guests and DHCP take .1-.3).
        endpoints = [_plug_endpoint(source, network["vni"], "10.99.0.201/24", network["mtu"]),
                     _plug_endpoint(target, network["vni"], "10.99.0.202/24", network["mtu"])]
        with ConsoleDriver.for_vm(cfg.api_url, vms[0]["id"], token=token) as console:
            _wait_addressed(console, vms[0]["nics"][0]["ip"])
            _guest_rtt(console, peer_ip)  # warm-up: ARP, the bridges' learning
            for trial in range(1, count + 1):
                overlay.rtt_ms.extend(_guest_rtt(console, peer_ip))
                native.rtt_ms.extend(_host_rtt(endpoints[0], "10.99.0.202"))
                direct.rtt_ms.extend(_host_rtt(source.namespace, target.address))
                overlay.throughput_mib_s.append(_guest_throughput(console, peer_ip))
                native.throughput_mib_s.append(_host_throughput(endpoints[0], endpoints[1], "10.99.0.202"))
                direct.throughput_mib_s.append(_host_throughput(source.namespace, target.namespace, target.address))
                say(f"trial {trial}: rtt p50 {median(overlay.rtt_ms):.2f} / {median(native.rtt_ms):.3f} / "
                    f"{median(direct.rtt_ms):.3f} ms; TCP {overlay.throughput_mib_s[-1]:.1f} / "
                    f"{native.throughput_mib_s[-1]:.1f} / {direct.throughput_mib_s[-1]:.1f} MiB/s "
                    "(guests via overlay / kernel endpoints via overlay / hosts direct)")
    finally:
        for namespace in endpoints:
            _unplug_endpoint(namespace)
        _remove(client, network, vms, group)
        client.close()
    _report(overlay, native, direct, say)
    return overlay, native, direct


def _report(overlay: PathFigures, native: PathFigures, direct: PathFigures, say) -> None:
    if not overlay.rtt_ms or not native.rtt_ms or not direct.rtt_ms:
        raise BenchError("no round trips measured")
    rows = [
        ("round trip p50 (ms)", median, "rtt_ms"),
        ("round trip max (ms)", max, "rtt_ms"),
        (f"TCP, {MIB_PER_TRANSFER} MiB, p50 (MiB/s)", median, "throughput_mib_s"),
    ]
    say(f"{'':30}{'guests, overlay':>16}{'kernel, overlay':>17}{'hosts, direct':>15}"
        f"{'guests/direct':>15}{'kernel/direct':>15}")
    for name, stat, field in rows:
        g, k, d = (stat(getattr(path, field)) for path in (overlay, native, direct))
        say(f"{name:30}{g:>16.3f}{k:>17.3f}{d:>15.3f}{g / d:>15.2f}{k / d:>15.2f}")
    say(f"({len(overlay.rtt_ms)} pings and {len(overlay.throughput_mib_s)} transfers per path)")
