"""Placement on the real lab of three hosts: groups, labels, disabled hosts, and claims that
never double-book a host, even under 100 concurrent requests to three scheduler replicas, one of
which is killed in the middle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import uuid

import nats
import pytest

from deploy import processes
from deploy.client import ApiError, VmflowClient
from tests.integration.cleanup import delete_all
from tests.integration.libvirt_probe import wait_until

MARKER = "VMFLOW-GUEST-BOOTED"


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def provision(api: VmflowClient, **fields) -> tuple[dict, dict]:
    body = {"name": name("fleet"), "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "image": "lab-guest",
            **fields}
    accepted = api.call("POST", "/v1/vms", json=body)
    return accepted, api.wait_operation(accepted["operation_id"], timeout_s=300)


@pytest.fixture
def cleanup(api):
    vm_ids: list[str] = []
    yield vm_ids
    delete_all(api, vm_ids)


def test_hard_anti_affinity_spreads_over_hosts_and_refuses_a_fourth(api, probe, cleanup):
    group = api.call("POST", "/v1/placement-groups",
                     json={"name": name("spread"), "policy": "anti-affinity", "hard": True})
    hosts = set()
    for _ in range(3):
        accepted, op = provision(api, placement_group_id=group["id"])
        cleanup.append(accepted["vm"]["id"])
        assert op["state"] == "succeeded", op
        vm = api.call("GET", f"/v1/vms/{accepted['vm']['id']}")
        assert probe.where(vm["id"]) == [vm["host_id"]]
        assert MARKER in probe.console_path(vm["host_id"], vm["id"]).read_text(errors="replace")
        hosts.add(vm["host_id"])
    assert hosts == set(probe.uris)  # one member on each of the three hosts

    accepted, op = provision(api, placement_group_id=group["id"])
    assert op["state"] == "failed"
    assert op["error"]["code"] == "no_valid_host"
    for host_id in probe.uris:
        assert f"{host_id} (anti-affinity group {group['id']} already has a member here)" in op["error"]["message"]
    with pytest.raises(ApiError, match="404"):
        api.call("GET", f"/v1/vms/{accepted['vm']['id']}")

    members = api.call("GET", f"/v1/placement-groups/{group['id']}")["members"]
    assert sorted(m["host_id"] for m in members) == sorted(probe.uris)
    with pytest.raises(ApiError, match="409 conflict: placement group .* still has members"):
        api.call("DELETE", f"/v1/placement-groups/{group['id']}")


def test_hard_affinity_keeps_members_together(api, probe, cleanup):
    group = api.call("POST", "/v1/placement-groups", json={"name": name("together"), "policy": "affinity"})
    host_ids = set()
    for _ in range(2):
        accepted, op = provision(api, placement_group_id=group["id"])
        cleanup.append(accepted["vm"]["id"])
        assert op["state"] == "succeeded", op
        host_ids.add(api.call("GET", f"/v1/vms/{accepted['vm']['id']}")["host_id"])
    assert len(host_ids) == 1


def test_a_required_label_lands_on_the_only_host_that_has_it(api, probe, cleanup):
    accepted, op = provision(api, required_labels=["gpu"])
    cleanup.append(accepted["vm"]["id"])
    assert op["state"] == "succeeded", op
    assert probe.where(accepted["vm"]["id"]) == ["h3"]
    accepted, op = provision(api, required_labels=["fpga"])
    assert op["state"] == "failed" and "labels removed h1 (lacks label fpga)" in op["error"]["message"]


def test_disabled_host_gets_no_new_vms(api, probe, cleanup):
    host = api.call("POST", "/v1/hosts/h3/disable", json={"reason": "firmware update"})
    try:
        assert host["state"] == "disabled" and host["disabled_reason"] == "firmware update"
        accepted, op = provision(api, required_labels=["gpu"])
        assert op["state"] == "failed"
        assert "host_enabled removed h3 (disabled: firmware update)" in op["error"]["message"]
    finally:
        assert api.call("POST", "/v1/hosts/h3/enable")["state"] == "up"
    with pytest.raises(ApiError, match="404"):
        api.call("POST", "/v1/hosts/h99/disable")


def stored_claims(stack_cfg) -> dict[str, list[str]]:
    """host -> the VM ids the shared claims bucket holds for it."""
    async def read() -> dict[str, list[str]]:
        nc = await nats.connect(stack_cfg.nats_url.split(","))
        try:
            kv = await nc.jetstream().key_value("vmflow_claims")
            claims = {}
            for key in await kv.keys():
                entry = await kv.get(key)
                claims[key] = [c["vm_id"] for c in json.loads(entry.value)["claims"]]
            return claims
        except nats.js.errors.NoKeysError:
            return {}
        finally:
            await nc.close()
    return asyncio.run(read())


def test_concurrent_requests_never_overbook_a_host(stack_cfg, admin_token, api, probe, cleanup):
    """100 requests at once, for more memory than the fleet has, to three scheduler replicas
    sharing their claims; one replica is killed in the middle of the burst. The claims let
    exactly what fits through; the rest fail with 'no valid host' and its reason; afterwards the
    store holds no claim (each settled or released once)."""
    assert len(stack_cfg.scheduler_names()) == 3
    memory_mib = 4096  # few enough real guests that all of them boot on two cores
    # Earlier tests' deletes are done; the hosts' next heartbeats show it within seconds.
    hosts = wait_until(lambda: (hs := api.call("GET", "/v1/hosts"))
                       and all(h["used"]["memory_mib"] == 0 for h in hs) and hs,
                       timeout_s=20, what="an empty fleet")
    # This machine's memory grows and shrinks under the lab (the hosts report what libvirt
    # sees), so the bounds use the capacity before and after the burst.
    before = {h["id"]: h["capacity"]["memory_mib"] for h in hosts}
    assert sum(c // memory_mib for c in before.values()) < 100

    def create(i: int) -> dict:
        with VmflowClient(stack_cfg.api_url, admin_token, timeout_s=120) as client:
            return client.call("POST", "/v1/vms", json={
                "name": f"burst-{i}", "vcpus": 1, "memory_mib": memory_mib, "disk_gib": 1, "image": "lab-guest"})

    def kill_a_replica_midway(started: threading.Event) -> None:
        started.wait(60)
        assert processes.crash_process(stack_cfg.root, "scheduler-2")  # the supervisor brings it back

    thirty_in = threading.Event()

    def create_counted(i: int) -> dict:
        if i == 30:
            thirty_in.set()
        return create(i)

    killer = threading.Thread(target=kill_a_replica_midway, args=(thirty_in,))
    killer.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
        accepted = list(pool.map(create_counted, range(100)))
    killer.join()
    cleanup.extend(a["vm"]["id"] for a in accepted)
    ops = [api.wait_operation(a["operation_id"], timeout_s=600, interval_s=1.0) for a in accepted]
    after = {h["id"]: h["capacity"]["memory_mib"] for h in api.call("GET", "/v1/hosts")}
    succeeded = [op for op in ops if op["state"] == "succeeded"]
    failed = [op for op in ops if op["state"] != "succeeded"]
    errors = {(op["error"] or {}).get("message", op["state"]) for op in failed}
    assert all(op["error"]["code"] == "no_valid_host" and "ram removed" in op["error"]["message"]
               for op in failed), errors
    # Exactly what fits got through: never more than a host holds, and no host left short.
    per_host = {host_id: len(probe.domain_uuids(host_id)) for host_id in probe.uris}
    assert sum(per_host.values()) == len(succeeded)
    for host_id, count in per_host.items():
        largest, smallest = max(before[host_id], after[host_id]), min(before[host_id], after[host_id])
        assert smallest // memory_mib <= count <= largest // memory_mib, (host_id, count, before, after)
    # Every claim settled (its VM runs) or was never made: nothing is held for nothing.
    wait_until(lambda: not any(stored_claims(stack_cfg).values()), timeout_s=30, what="no claim left in the store")


def test_only_a_disk_on_the_hosts_own_pool_takes_its_space(api, probe, cleanup):
    """A root disk on the shared pool takes nothing of a host's own storage; one on the host's
    pool must fit there. Each host's pool here has less room than 2,000 GiB."""
    hosts = api.call("GET", "/v1/hosts")
    assert all(h["capacity"]["disk_gib"] < 2000 for h in hosts)
    accepted, op = provision(api, disk_gib=2000, storage="local")
    cleanup.append(accepted["vm"]["id"])
    assert op["state"] == "failed" and op["error"]["code"] == "no_valid_host", op
    message = op["error"]["message"]
    assert "/ 2000 GiB of local disk" in message
    assert all(f"{h['id']} (needs 2000 GiB" in message for h in hosts), message
    assert probe.where(accepted["vm"]["id"]) == []

    accepted, op = provision(api, disk_gib=2000)  # thin, on the shared pool: placed and booted
    cleanup.append(accepted["vm"]["id"])
    assert op["state"] == "succeeded", op
    vm_id = accepted["vm"]["id"]
    host = api.call("GET", f"/v1/vms/{vm_id}")["host_id"]
    assert probe.where(vm_id) == [host] and MARKER in probe.console_path(host, vm_id).read_text(errors="replace")
    allocation = next(a for a in api.call("GET", f"/v1/hosts/{host}")["allocations"] if a["vm_id"] == vm_id)
    assert allocation["disk_gib"] == 0
