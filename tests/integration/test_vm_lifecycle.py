"""A VM's whole life through the REST API, checked on the host through virsh: it boots for real,
power actions act on the real domain, and delete leaves nothing behind."""

from __future__ import annotations

import uuid

import pytest

from deploy.client import VmflowClient
from tests.integration.event_tap import EventTap
from tests.integration.libvirt_probe import LibvirtProbe, wait_until

MARKER = "VMFLOW-GUEST-BOOTED"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def created_vm(api: VmflowClient, probe: LibvirtProbe):
    accepted = api.create_vm(unique_name("e2e"), 1, 128, 1, "lab-guest")
    op = api.wait_operation(accepted["operation_id"], timeout_s=240)
    assert op["state"] == "succeeded", op
    yield api.call("GET", f"/v1/vms/{accepted['vm']['id']}")
    try:
        api.wait_operation(api.call("DELETE", f"/v1/vms/{accepted['vm']['id']}")["operation_id"])
    except Exception:
        pass  # the test deleted it already


def test_provision_boots_a_real_guest_and_delete_leaves_nothing(stack_cfg, admin_token, api, probe):
    tap = EventTap(stack_cfg.api_url, token=admin_token)
    accepted = api.create_vm(unique_name("e2e"), 1, 128, 1, "lab-guest")
    vm_id, op_id = accepted["vm"]["id"], accepted["operation_id"]
    assert op_id == f"vm-{vm_id}-provision"
    steps_seen: set[str] = set()
    op = api.wait_operation(op_id, timeout_s=240, on_progress=lambda o: steps_seen.add(o["step"] or ""))
    assert op["state"] == "succeeded", op
    assert op["steps_done"] == ["place", "create_volume", "start", "wait_booted", "record"]

    vm = api.call("GET", f"/v1/vms/{vm_id}")
    host_id = vm["host_id"]
    assert vm["state"] == "running" and host_id in probe.uris
    # The host vmflow reports really runs it (and no other host does), and the guest booted.
    assert probe.where(vm_id) == [host_id]
    assert probe.state(host_id, vm_id) == "running"
    console = probe.console_path(host_id, vm_id)
    assert MARKER in console.read_text(errors="replace")
    disk = probe.disk_path(host_id, vm_id)
    assert disk.exists()
    host = api.call("GET", f"/v1/hosts/{host_id}")
    assert host["used"]["memory_mib"] >= 128
    assert vm_id in [a["vm_id"] for a in host["allocations"]]

    # Every step was visible as events on NATS, through the API's SSE stream.
    wait_until(lambda: tap.subjects_for(f"{op_id}.succeeded"), 10, what="op succeeded event")
    vm_events = {s.rsplit(".", 1)[1] for s in tap.subjects_for(f".vm.default.{vm_id}.")}
    assert {"created", "defined", "started", "state"} <= vm_events
    assert tap.subjects_for(".volume.shared.")

    delete = api.call("DELETE", f"/v1/vms/{vm_id}")
    assert api.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"] == delete["operation_id"]
    assert api.wait_operation(delete["operation_id"])["state"] == "succeeded"
    assert probe.where(vm_id) == []
    assert not disk.exists() and not console.exists()
    with pytest.raises(Exception, match="404"):
        api.call("GET", f"/v1/vms/{vm_id}")
    wait_until(lambda: tap.subjects_for(f".vm.default.{vm_id}.undefined"), 10, what="undefined event")
    tap.close()


def test_stop_start_reboot_act_on_the_real_domain(api, probe, created_vm):
    vm_id, host_id = created_vm["id"], created_vm["host_id"]
    console = probe.console_path(host_id, vm_id)

    stop = api.call("POST", f"/v1/vms/{vm_id}/stop", json={"timeout_s": 1})
    assert api.wait_operation(stop["operation_id"])["state"] == "succeeded"
    assert probe.state(host_id, vm_id) == "shut off"
    assert api.call("GET", f"/v1/vms/{vm_id}")["state"] == "stopped"

    # A stopped VM cannot be stopped or rebooted again; the reason says why.
    with pytest.raises(Exception, match="409 conflict: cannot reboot VM .* while it is stopped"):
        api.call("POST", f"/v1/vms/{vm_id}/reboot")

    start = api.call("POST", f"/v1/vms/{vm_id}/start")
    assert api.wait_operation(start["operation_id"], timeout_s=240)["state"] == "succeeded"
    assert probe.state(host_id, vm_id) == "running"
    assert console.read_text(errors="replace").count(MARKER) == 2

    reboot = api.call("POST", f"/v1/vms/{vm_id}/reboot", json={"timeout_s": 1})
    assert api.wait_operation(reboot["operation_id"], timeout_s=240)["state"] == "succeeded"
    assert probe.state(host_id, vm_id) == "running"
    assert console.read_text(errors="replace").count(MARKER) == 3
    assert api.call("GET", f"/v1/vms/{vm_id}")["state"] == "running"


def test_health_and_readiness(api):
    assert api.call("GET", "/healthz") == {"status": "ok"}
    ready = api.call("GET", "/readyz")
    assert ready == {"ready": True, "checks": {"database": "ok", "nats": "ok", "temporal": "ok"}}


def test_images_and_hosts_are_listed(api, probe):
    assert "lab-guest" in [i["name"] for i in api.call("GET", "/v1/images")]
    hosts = api.call("GET", "/v1/hosts")
    assert [h["id"] for h in hosts] == sorted(probe.uris)
    for host in hosts:
        assert host["state"] == "up" and host["domain_type"] == "qemu"
        assert host["capacity"]["vcpus"] >= 1 and host["capacity"]["memory_mib"] > 0
        assert host["last_heartbeat_age_s"] < 10
