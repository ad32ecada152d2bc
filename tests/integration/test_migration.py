"""Moving VMs through the API on the real lab: live migration keeps the guest running, cancel
and failure leave it where it was, maintenance empties a host, and the inventory always matches
what libvirt says on every host."""

from __future__ import annotations

import re
import time
import uuid
import warnings
from pathlib import Path

import pytest

from deploy import processes
from deploy.client import ApiError, VmflowClient
from tests.integration.event_tap import EventTap
from tests.integration.libvirt_probe import LibvirtProbe, wait_until

COUNTER = re.compile(r"vmflow-counter (\d+)")
MARKER = "VMFLOW-GUEST-BOOTED"


def counters(text: str) -> list[int]:
    return [int(n) for n in COUNTER.findall(text)]


def provision(api: VmflowClient, image: str = "lab-guest", **fields) -> dict:
    body = {"name": f"mig-{uuid.uuid4().hex[:6]}", "vcpus": 1, "memory_mib": 128, "disk_gib": 1,
            "image": image, **fields}
    accepted = api.call("POST", "/v1/vms", json=body)
    op = api.wait_operation(accepted["operation_id"], timeout_s=300)
    assert op["state"] == "succeeded", op
    return api.call("GET", f"/v1/vms/{accepted['vm']['id']}")


def agree(api: VmflowClient, probe: LibvirtProbe, vm_id: str) -> str:
    """The inventory names exactly the host libvirt runs the VM on; returns it."""
    vm = api.call("GET", f"/v1/vms/{vm_id}")
    assert probe.where(vm_id) == [vm["host_id"]], (vm, probe.where(vm_id))
    return vm["host_id"]


def note_if_the_guest_stops(console: Path, why: str) -> None:
    """After a pre-copy of many passes, QEMU under TCG has been seen to miss some of the guest's
    writes: the moved guest then hangs, oopses or reboots (KVM hosts track dirty pages in
    hardware). Tests that make such moves assert the platform's part strictly (how the operation
    ends, which host runs the VM, what the inventory says) and note a hurt guest as a warning."""
    after = counters(console.read_text(errors="replace"))[-1]
    try:
        wait_until(lambda: counters(console.read_text(errors="replace"))[-1] > after + 1, 30,
                   what="the guest to go on counting")
        if console.read_text(errors="replace").count(MARKER) == 1:
            return
    except AssertionError:
        pass
    warnings.warn(f"the guest stopped counting or rebooted {why} (TCG dirty tracking); its console ends "
                  f"with {console.read_text(errors='replace')[-200:]!r}")


def migrate(api: VmflowClient, vm_id: str, **body) -> dict:
    accepted = api.call("POST", f"/v1/vms/{vm_id}/migrate", json=body)
    return api.wait_operation(accepted["operation_id"], timeout_s=300)


def test_a_running_guest_moves_h1_h2_h3_without_a_reboot(stack_cfg, admin_token, api, probe, cleanup):
    tap = EventTap(stack_cfg.api_url, token=admin_token)
    vm = provision(api)
    cleanup.append(vm["id"])
    console = probe.guest_log_path(vm["host_id"], vm["id"])
    route = [h for h in ("h1", "h2", "h3") if h != vm["host_id"]] + [vm["host_id"]]
    for target in route:
        before = counters(console.read_text(errors="replace"))
        op = migrate(api, vm["id"], target_host_id=target)
        assert op["state"] == "succeeded", op
        assert agree(api, probe, vm["id"]) == target
        assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "running"
        # The guest kept counting on the new host: later numbers, no second boot.
        wait_until(lambda: counters(console.read_text(errors="replace"))[-1] > before[-1] + 1, 20,
                   what="the counter to go on after the move")
    text = console.read_text(errors="replace")
    assert text.count(MARKER) == 1
    numbers = counters(text)
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] + 1 >= len(numbers)
    # Each move is a fact on the event stream: from where, to where.
    moved = lambda: [(e["data"]["from_host_id"], e["data"]["host_id"]) for e in tap.events  # noqa: E731
                     if e["subject"].endswith(f"{vm['id']}.moved")]
    hops = list(zip([vm["host_id"], *route], route))
    wait_until(lambda: moved() == hops, 10, what=f"moved events {hops}")
    tap.close()


def test_a_second_migration_of_the_same_vm_is_refused(api, probe, cleanup):
    vm = provision(api)
    cleanup.append(vm["id"])
    first = api.call("POST", f"/v1/vms/{vm['id']}/migrate", json={})
    with pytest.raises(ApiError, match="409 conflict: cannot migrate VM .* while it is migrating"):
        api.call("POST", f"/v1/vms/{vm['id']}/migrate", json={})
    assert api.wait_operation(first["operation_id"], timeout_s=300)["state"] == "succeeded"
    agree(api, probe, vm["id"])


def test_bad_migration_requests(api, cleanup):
    vm = provision(api)
    cleanup.append(vm["id"])
    with pytest.raises(ApiError, match="422 invalid_request: target_host_id: unknown host 'h9'"):
        api.call("POST", f"/v1/vms/{vm['id']}/migrate", json={"target_host_id": "h9"})
    with pytest.raises(ApiError, match="already runs on"):
        api.call("POST", f"/v1/vms/{vm['id']}/migrate", json={"target_host_id": vm["host_id"]})
    with pytest.raises(ApiError, match="404"):
        api.call("POST", f"/v1/vms/{uuid.uuid4()}/migrate", json={})


def test_cancel_in_flight_leaves_the_vm_running_on_its_source(stack_cfg, admin_token, api, probe, cleanup):
    vm = provision(api, memory_mib=256)
    cleanup.append(vm["id"])
    source = vm["host_id"]
    tap = EventTap(stack_cfg.api_url, token=admin_token)
    # Capped at 1 MiB/s, copying the guest's memory takes minutes: plenty of time to cancel.
    accepted = api.call("POST", f"/v1/vms/{vm['id']}/migrate",
                        json={"completion_timeout_s": 600, "bandwidth_mib_s": 1})
    op_id = accepted["operation_id"]
    wait_until(lambda: (api.call("GET", f"/v1/operations/{op_id}").get("activity_progress") or {})
               .get("iteration", 0) >= 1, 60, what="the migration to be under way")
    # The migration's progress is published on NATS too, as events of its operation.
    wait_until(lambda: [e for e in tap.events if e["subject"].endswith(f"{op_id}.progress")
                        and "data_remaining_mib" in e["data"].get("migration", {})], 15,
               what="a migration progress event")
    tap.close()
    # Listed under the target the scheduler picked, and summed up with both hosts, while it runs.
    target = api.call("GET", f"/v1/operations/{op_id}")["host_id"]
    assert target not in (None, source)
    [listed] = api.call("GET", "/v1/operations", params={"host_id": target, "vm_id": vm["id"], "state": "running"})
    assert listed["id"] == op_id and sorted(listed["host_ids"]) == sorted([source, target])
    assert f"{source} -> {target}" in listed["summary"], listed
    api.call("POST", f"/v1/operations/{op_id}/cancel")
    op = api.wait_operation(op_id, timeout_s=120)
    assert op["state"] == "cancelled" and op["error"]["code"] == "cancelled"
    assert agree(api, probe, vm["id"]) == source
    assert probe.state(source, vm["id"]) == "running"
    with pytest.raises(ApiError, match="409"):
        api.call("POST", f"/v1/operations/{op_id}/cancel")


def test_a_migration_outlives_a_crash_of_its_source_worker(stack_cfg, api, probe, cleanup):
    """The source host's worker dies mid-copy and the supervisor brings it back: the operation
    neither hangs nor gives up; it ends with the VM on exactly one host and the inventory saying which."""
    vm = provision(api)
    cleanup.append(vm["id"])
    source = vm["host_id"]
    target = next(h for h in ("h1", "h2", "h3") if h != source)
    console = probe.guest_log_path(source, vm["id"])
    accepted = api.call("POST", f"/v1/vms/{vm['id']}/migrate",
                        json={"target_host_id": target, "completion_timeout_s": 600, "bandwidth_mib_s": 2})
    op_id = accepted["operation_id"]
    wait_until(lambda: (api.call("GET", f"/v1/operations/{op_id}").get("activity_progress") or {})
               .get("data_processed_mib", 0) >= 1, 60, what="the copy to be under way")
    dead = processes.read_pid(stack_cfg.root, f"host-worker-{source}")
    assert processes.crash_process(stack_cfg.root, f"host-worker-{source}")
    # Nobody starts it by hand: the supervisor brings the worker back.
    wait_until(lambda: processes.read_pid(stack_cfg.root, f"host-worker-{source}") not in (None, dead), 10,
               what="the supervisor to restart the worker")
    op = api.wait_operation(op_id, timeout_s=600)
    assert op["state"] == "succeeded", op
    assert agree(api, probe, vm["id"]) == target
    assert probe.state(target, vm["id"]) == "running"
    note_if_the_guest_stops(console, "after a long capped copy")


def test_a_fast_dirtying_guest_converges_through_the_policy_or_is_aborted_in_time(api, probe, cleanup):
    # The guest rewrites 48 MiB in a loop. A capped copy rate makes it outrun the copy: at 32 MiB/s
    # the policy has to raise the downtime limit (and throttle the guest) before it converges; at
    # 8 MiB/s not even the first pass ends before the completion timeout, so it aborts.
    vm = provision(api, image="lab-guest-dirty", memory_mib=256)
    cleanup.append(vm["id"])
    source = vm["host_id"]
    console = probe.guest_log_path(source, vm["id"])

    def keeps_counting(why: str) -> None:
        after = counters(console.read_text(errors="replace"))[-1]
        wait_until(lambda: counters(console.read_text(errors="replace"))[-1] > after + 1, 30,
                   what=f"the guest to go on counting {why}")

    # The guest fills its buffer first (seconds under TCG), then rewrites it: chase that.
    wait_until(lambda: "vmflow-dirtied-mib" in console.read_text(errors="replace"), 90,
               what="the guest to be rewriting its memory")
    started = time.monotonic()
    op = migrate(api, vm["id"], completion_timeout_s=6, bandwidth_mib_s=8)
    elapsed_s = time.monotonic() - started
    assert op["state"] == "failed" and "did not complete within 6 s" in op["error"]["message"], op
    assert elapsed_s < 6 + 30
    assert agree(api, probe, vm["id"]) == source and probe.state(source, vm["id"]) == "running"
    keeps_counting("after the abort")

    op = migrate(api, vm["id"], completion_timeout_s=120, bandwidth_mib_s=32)
    assert op["state"] == "succeeded", op
    (figures,) = [d for d in op["details"] if d.startswith("took ")]
    limit_ms = int(re.search(r"limit (\d+) ms", figures).group(1))
    assert limit_ms > 100, f"the policy never raised the downtime limit: {figures}"
    target = agree(api, probe, vm["id"])
    assert target != source and probe.state(target, vm["id"]) == "running"
    note_if_the_guest_stops(console, "after converging")


def test_maintenance_empties_a_host_and_it_comes_back(api, probe, cleanup):
    for other in ("h2", "h3"):  # so that all three VMs start on h1
        api.call("POST", f"/v1/hosts/{other}/disable", json={"reason": "test setup"})
    try:
        vms = [provision(api), provision(api), provision(api, storage="local")]  # one keeps its own disk
    finally:
        for other in ("h2", "h3"):
            api.call("POST", f"/v1/hosts/{other}/enable")
    cleanup.extend(vm["id"] for vm in vms)
    assert {vm["host_id"] for vm in vms} == {"h1"}

    accepted = api.call("POST", "/v1/hosts/h1/maintenance")
    assert accepted["host"]["state"] == "maintenance"
    op = api.wait_operation(accepted["operation_id"], timeout_s=600)
    assert op["state"] == "succeeded", op
    assert len([line for line in op["details"] if " moved to " in line]) == 3
    assert probe.domain_uuids("h1") == set()
    for vm in vms:
        assert agree(api, probe, vm["id"]) in ("h2", "h3")
    local = vms[2]["id"]
    now_on = agree(api, probe, local)
    assert f"/hosts/{now_on}/pool/volumes/" in str(probe.disk_path(now_on, local))  # its disk came along
    assert api.call("GET", "/v1/hosts/h1")["state"] == "maintenance"
    # Nothing is placed on a host in maintenance.
    extra = provision(api)
    cleanup.append(extra["id"])
    assert extra["host_id"] != "h1"
    assert api.call("DELETE", "/v1/hosts/h1/maintenance")["state"] == "up"


def test_maintenance_that_cannot_move_a_vm_says_so(api, probe, cleanup):
    vm = provision(api, required_labels=["gpu"])  # only h3 has gpu: it cannot go anywhere else
    cleanup.append(vm["id"])
    op = api.wait_operation(api.call("POST", "/v1/hosts/h3/maintenance")["operation_id"], timeout_s=300)
    assert op["state"] == "failed" and "labels removed" in op["error"]["message"]
    host = api.call("GET", "/v1/hosts/h3")
    assert host["state"] == "maintenance_failed" and vm["name"] in host["disabled_reason"]
    assert agree(api, probe, vm["id"]) == "h3"
    assert api.call("DELETE", "/v1/hosts/h3/maintenance")["state"] == "up"


def test_a_stopped_vm_moves_its_definition(api, probe, cleanup):
    vm = provision(api)
    cleanup.append(vm["id"])
    stop = api.call("POST", f"/v1/vms/{vm['id']}/stop", json={"force": True})
    assert api.wait_operation(stop["operation_id"])["state"] == "succeeded"
    op = migrate(api, vm["id"])
    assert op["state"] == "succeeded", op
    target = agree(api, probe, vm["id"])
    assert target != vm["host_id"] and probe.state(target, vm["id"]) == "shut off"
    assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "stopped"
    start = api.call("POST", f"/v1/vms/{vm['id']}/start")
    assert api.wait_operation(start["operation_id"], timeout_s=240)["state"] == "succeeded"
    assert probe.state(target, vm["id"]) == "running"
