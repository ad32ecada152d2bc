"""VMs on virtual networks, checked from inside the guests through their consoles, not through
vmflow's records: addresses served by DHCP, reach across hosts, isolation between tenants with
the same subnet, a live migration under ping, NIC hot-plug, the seed's hostname, and nothing left
on any host once VMs and networks are gone."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy import lab
from deploy.client import ApiError, VmflowClient
from deploy.console_driver import ConsoleDriver
from tests.integration.libvirt_probe import LibvirtProbe, wait_until

CIDR = "10.44.0.0/24"  # both tenants use it
OTHER_TENANT = "tenant-b"
PING_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) packets received")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_network(api: VmflowClient, cidr: str, **extra) -> dict:
    """A network of the tenant ``api``'s token acts in."""
    accepted = api.call("POST", "/v1/networks", json={"name": unique("net"), "cidr": cidr, **extra})
    op = api.wait_operation(accepted["operation_id"], timeout_s=60)
    assert op["state"] == "succeeded", op
    return api.call("GET", f"/v1/networks/{accepted['target']}")


def delete_network(api: VmflowClient, network_id: str) -> None:
    accepted = api.call("DELETE", f"/v1/networks/{network_id}")
    assert api.wait_operation(accepted["operation_id"], timeout_s=60)["state"] == "succeeded"


def create_vm(api: VmflowClient, name: str, networks: list[dict], **extra) -> dict:
    body = {"name": name, "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "image": "lab-guest",
            "networks": networks, "hostname": name, **extra}
    return api.call("POST", "/v1/vms", json=body)


def wait_created(api: VmflowClient, accepted: dict) -> dict:
    op = api.wait_operation(accepted["operation_id"], timeout_s=240)
    assert op["state"] == "succeeded", op
    return api.call("GET", f"/v1/vms/{accepted['vm']['id']}")


def delete_vm(api: VmflowClient, vm_id: str) -> None:
    try:
        accepted = api.call("DELETE", f"/v1/vms/{vm_id}")
    except ApiError as exc:
        if exc.status == 404:
            return
        raise
    assert api.wait_operation(accepted["operation_id"], timeout_s=120)["state"] == "succeeded"


def guest_address(console: ConsoleDriver, iface: str = "eth0", timeout_s: float = 60) -> str | None:
    """The IPv4 address the guest itself has on ``iface`` (from DHCP), asked through its console."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = console.run(f"ip -4 -o addr show {iface}", timeout_s=20)
        if found := re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
            return found.group(1)
        time.sleep(1)
    return None


def pings(console: ConsoleDriver, ip: str, count: int = 3, first_answer_s: int = 10) -> int:
    """How many of ``count`` pings from inside the guest were answered (busybox ping gives up
    when the first answer takes longer than ``first_answer_s``: ARP and the tunnels' first
    flood take a while on emulated guests)."""
    out = console.run(f"ping -c {count} -W {first_answer_s} {ip}", timeout_s=count + first_answer_s + 20)
    found = PING_LOSS.search(out)
    return int(found.group(2)) if found else 0


@pytest.fixture(scope="module")
def other(tenant_client) -> VmflowClient:
    """A member of tenant B, the second tenant."""
    return tenant_client(OTHER_TENANT, "member")


@pytest.fixture(scope="module")
def world(stack_cfg, api: VmflowClient, other: VmflowClient):
    """Tenant A (the admin's own, default): two VMs on one network, on different hosts. Tenant
    B: a VM on a network with the same CIDR, made by a member of B. Torn down at the end, and
    checked to leave nothing (see the last test)."""
    group = api.call("POST", "/v1/placement-groups", json={"name": unique("apart"), "policy": "anti-affinity"})
    blue = create_network(api, CIDR)
    red = create_network(other, CIDR)
    made = {
        "a1": create_vm(api, unique("alpha"), [{"network_id": blue["id"]}], placement_group_id=group["id"]),
        "a2": create_vm(api, unique("beta"), [{"network_id": blue["id"]}], placement_group_id=group["id"]),
        "b1": create_vm(other, unique("gamma"), [{"network_id": red["id"]}]),
    }
    owner = {"a1": api, "a2": api, "b1": other}
    vms = {key: wait_created(owner[key], accepted) for key, accepted in made.items()}
    yield {"blue": blue, "red": red, "vms": vms, "group": group}
    for key, vm in vms.items():
        delete_vm(owner[key], vm["id"])
    api.call("DELETE", f"/v1/placement-groups/{group['id']}")


def test_dhcp_serves_exactly_vmflows_address_and_the_seed_names_the_guest(stack_cfg, admin_token, world):
    for key in ("a1", "a2"):
        vm = world["vms"][key]
        [nic] = vm["nics"]
        assert nic["network_id"] == world["blue"]["id"] and re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", nic["mac"])
        with ConsoleDriver.for_vm(stack_cfg.api_url, vm["id"], token=admin_token) as console:
            assert guest_address(console) == nic["ip"]
            assert console.run("hostname").strip().splitlines()[-1] == vm["name"]
            assert console.run("cat /sys/class/net/eth0/address").strip().splitlines()[-1] == nic["mac"]


def test_two_vms_on_one_network_reach_each_other_across_hosts(stack_cfg, admin_token, world):
    a1, a2 = world["vms"]["a1"], world["vms"]["a2"]
    assert a1["host_id"] != a2["host_id"]
    with ConsoleDriver.for_vm(stack_cfg.api_url, a1["id"], token=admin_token) as console:
        guest_address(console)
        assert pings(console, a2["nics"][0]["ip"]) == 3
        # TCP: the peer's responder answers with its VM id.
        assert a2["id"] in console.run(f"timeout 10 wget -qO- http://{a2['nics'][0]['ip']}/", timeout_s=30)


def test_another_tenants_network_with_the_same_cidr_is_isolated(stack_cfg, world, other):
    b1 = world["vms"]["b1"]
    assert b1["nics"][0]["ip"] in {vm["nics"][0]["ip"] for vm in (world["vms"]["a1"], world["vms"]["a2"])}
    with ConsoleDriver.for_vm(stack_cfg.api_url, b1["id"], token=other.token) as console:
        assert guest_address(console) == b1["nics"][0]["ip"]
        for key in ("a1", "a2"):
            ip = world["vms"][key]["nics"][0]["ip"]
            if ip == b1["nics"][0]["ip"]:
                continue
            assert pings(console, ip, count=2, first_answer_s=3) == 0
            out = console.run(f"timeout 5 wget -qO- http://{ip}/ || echo UNREACHABLE", timeout_s=30)
            assert "UNREACHABLE" in out and world["vms"][key]["id"] not in out
            assert "fault" not in out  # refused for want of a route to it, nothing else


def test_live_migration_under_ping_keeps_the_address(stack_cfg, admin_token, api, world, probe: LibvirtProbe):
    a1, a2 = world["vms"]["a1"], world["vms"]["a2"]
    ip = a1["nics"][0]["ip"]
    # a user on the moving VM's console
    mover = ConsoleDriver.for_vm(stack_cfg.api_url, a1["id"], token=admin_token)
    with ConsoleDriver.for_vm(stack_cfg.api_url, a2["id"], token=admin_token) as watcher:
        guest_address(watcher)
        assert pings(watcher, ip) == 3
        watcher.run(f"(ping -i 0.2 -c 150 {ip} > /tmp/ping.log 2>&1 &)")
        time.sleep(3)
        target = next(h for h in probe.uris if h not in (a1["host_id"], a2["host_id"]))
        accepted = api.call("POST", f"/v1/vms/{a1['id']}/migrate", json={"target_host_id": target})
        op = api.wait_operation(accepted["operation_id"], timeout_s=120)
        assert op["state"] == "succeeded", op
        assert probe.where(a1["id"]) == [target]
        # The console does not survive the move: the session ends saying so, and a new one
        # reaches the VM on its new host (below).
        wait_until(lambda: mover.closed, 20, what="the moving VM's console to close")
        assert (mover.close_code, mover.close_reason) == (4000, "vm_moved")
        mover.close()
        time.sleep(6)
        log = watcher.run("killall -INT ping; sleep 1; tail -n 3 /tmp/ping.log; "
                          "grep -o 'seq=[0-9]*' /tmp/ping.log | tail -n 5", timeout_s=30)
    sent, received = map(int, PING_LOSS.search(log).groups()) if PING_LOSS.search(log) else (0, 0)
    seqs = [int(s) for s in re.findall(r"seq=(\d+)", log)]
    print(f"\nlive migration under ping (every 0.2 s): {sent - received} of {sent} pings lost")
    assert sent > 0 and sent - received <= 25  # connectivity back within 5 s
    assert seqs and seqs[-1] >= sent - 3  # the last pings were answered again
    moved = api.call("GET", f"/v1/vms/{a1['id']}")
    assert moved["host_id"] == target and moved["nics"][0]["ip"] == ip
    with ConsoleDriver.for_vm(stack_cfg.api_url, a1["id"], token=admin_token) as console:
        assert guest_address(console) == ip
        assert pings(console, a2["nics"][0]["ip"]) == 3


def test_stop_cold_migration_and_start_keep_the_address(stack_cfg, api, other, world, probe: LibvirtProbe):
    b1 = world["vms"]["b1"]
    ip = b1["nics"][0]["ip"]
    # The tenant stops and starts its VM; moving it between hosts is the admin's.
    for client, path, body in ((other, "stop", {"force": True}), (api, "migrate", {}), (other, "start", None)):
        accepted = client.call("POST", f"/v1/vms/{b1['id']}/{path}", json=body)
        op = client.wait_operation(accepted["operation_id"], timeout_s=180)
        assert op["state"] == "succeeded", (path, op)
    moved = other.call("GET", f"/v1/vms/{b1['id']}")
    assert moved["host_id"] != b1["host_id"] and probe.where(b1["id"]) == [moved["host_id"]]
    assert moved["nics"] == b1["nics"]
    with ConsoleDriver.for_vm(stack_cfg.api_url, b1["id"], token=other.token) as console:
        assert guest_address(console) == ip


def test_one_console_session_per_vm(stack_cfg, admin_token, world):
    vm = world["vms"]["a2"]
    with ConsoleDriver.for_vm(stack_cfg.api_url, vm["id"], token=admin_token) as first:
        first.run("true")
        second = ConsoleDriver.for_vm(stack_cfg.api_url, vm["id"], token=admin_token)
        wait_until(lambda: second.closed, 20, what="the second session to be refused")
        assert second.close_code == 4409 and "already open" in second.close_reason
        second.close()
        assert first.run("echo still-here").strip().endswith("still-here")


def test_nic_hotplug_and_unplug_on_a_running_vm(stack_cfg, admin_token, api, world):
    a1 = api.call("GET", f"/v1/vms/{world['vms']['a1']['id']}")
    green = create_network(api, "10.45.0.0/28", gateway="10.45.0.1")
    try:
        accepted = api.call("POST", f"/v1/vms/{a1['id']}/nics", json={"network_id": green["id"]})
        assert api.wait_operation(accepted["operation_id"], timeout_s=60)["state"] == "succeeded"
        nics = api.call("GET", f"/v1/vms/{a1['id']}")["nics"]
        assert [n["network_id"] for n in nics] == [world["blue"]["id"], green["id"]]
        added = nics[1]
        assert added["ip"] == "10.45.0.3"  # .1 the gateway, .2 the DHCP server
        with ConsoleDriver.for_vm(stack_cfg.api_url, a1["id"], token=admin_token) as console:
            assert guest_address(console, "eth1") == added["ip"]
            # A port on a network in use cannot go with the network.
            with pytest.raises(ApiError) as refused:
                api.call("DELETE", f"/v1/networks/{green['id']}")
            assert refused.value.status == 409
            accepted = api.call("DELETE", f"/v1/vms/{a1['id']}/nics/{added['id']}")
            assert api.wait_operation(accepted["operation_id"], timeout_s=90)["state"] == "succeeded"
            gone = console.run("ip link show eth1 || echo NO-SUCH-NIC", timeout_s=20)
            assert "NO-SUCH-NIC" in gone
        assert [n["id"] for n in api.call("GET", f"/v1/vms/{a1['id']}")["nics"]] == [nics[0]["id"]]
        assert [p["kind"] for p in api.call("GET", f"/v1/networks/{green['id']}/ports")] == ["dhcp"]
    finally:
        delete_network(api, green["id"])


def test_concurrent_creates_on_a_small_subnet_share_no_address(stack_cfg, api):
    tiny = create_network(api, "10.46.0.0/29", gateway="10.46.0.1")  # 6 usable: gateway, DHCP, 4 VMs

    def attempt(i: int):
        try:
            return create_vm(api, unique(f"tiny{i}"), [{"network_id": tiny["id"]}])
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    accepted = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, ApiError)]
    try:
        assert len(accepted) == 4 and len(refused) == 4
        assert all(r.status == 409 and "full" in r.message for r in refused)
        ips = [a["vm"]["nics"][0]["ip"] for a in accepted]
        assert sorted(ips) == ["10.46.0.3", "10.46.0.4", "10.46.0.5", "10.46.0.6"]
        for a in accepted:
            assert api.wait_operation(a["operation_id"], timeout_s=240)["state"] == "succeeded"
    finally:
        for a in accepted:
            delete_vm(api, a["vm"]["id"])
        delete_network(api, tiny["id"])


def host_leftovers(stack_cfg) -> list[str]:
    """Network plumbing, DHCP servers and seeds left on any lab host, seen from outside vmflow."""
    the_lab = lab.load_lab(stack_cfg.lab_name, stack_cfg.root / "lab")
    found = []
    for host in the_lab.hosts:
        links = subprocess.run(["ip", "-n", host.namespace, "-o", "link", "show"], capture_output=True,
                               text=True, check=True).stdout
        found += [f"{host.host_id}: link {m}" for m in re.findall(r"^\d+: (vn[bxd]-\d+)", links, re.M)]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"namespace {n.split()[0]}" for n in namespaces.splitlines()
              if n.startswith(f"{stack_cfg.lab_name}-h") and "-dhcp-" in n]
    for proc in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines():
        if proc.startswith("dnsmasq") and str(stack_cfg.root) in proc:
            found.append(f"process {proc[:80]}")
    found += [f"seed {p.name}" for p in (stack_cfg.pool_dir / "seeds").glob("*")]
    return found


def test_deleting_vms_and_networks_leaves_nothing_on_any_host(stack_cfg, api, other, world):
    for key, vm in world["vms"].items():
        delete_vm(other if key == "b1" else api, vm["id"])
    delete_network(api, world["blue"]["id"])
    delete_network(other, world["red"]["id"])
    wait_until(lambda: not host_leftovers(stack_cfg), 30, 1, "every host to drop the networks")
    for network, client in ((world["blue"], api), (world["red"], other)):
        with pytest.raises(ApiError) as gone:
            client.call("GET", f"/v1/networks/{network['id']}")
        assert gone.value.status == 404
