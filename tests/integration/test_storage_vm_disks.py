"""A VM's disks through the REST API, checked on the host with virsh, qemu-img and qemu-io:
data volumes hot-plugged and unplugged, snapshots that really restore the disk, templates that
boot, and refusals (409) while the VM runs. One VM serves the module; each test puts it in the
state it needs."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from deploy.client import ApiError, VmflowClient
from tests.integration.libvirt_probe import LibvirtProbe
from tests.integration.test_storage_volumes import (
    EventTap,
    Volumes,
    expect_error,
    qemu_info,
    succeeded,
    unique,
)

MARKER = "VMFLOW-GUEST-BOOTED"
BOOT_TIMEOUT_S = 300


def qemu_io(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", *args], capture_output=True, text=True, timeout=60)


def reads_pattern(disk: str, pattern: str, offset: str = "0") -> bool:
    """Whether the first 64 KiB at ``offset`` hold ``pattern`` (qemu-io verifies it)."""
    result = qemu_io("-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset} 64k", disk)
    return result.returncode == 0 and "verification failed" not in result.stdout + result.stderr


def write_pattern(disk: str, pattern: str, offset: str = "0") -> None:
    result = qemu_io("-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", disk)
    assert result.returncode == 0 and "wrote 65536" in result.stdout, result


class LabVm:
    """A VM of the lab guest image, moved to the power state a test needs."""

    def __init__(self, api: VmflowClient, probe: LibvirtProbe, image: str = "lab-guest") -> None:
        self.api, self.probe = api, probe
        accepted = api.create_vm(unique("disks"), 1, 128, 1, image)
        self.id = accepted["vm"]["id"]
        succeeded(api, accepted, BOOT_TIMEOUT_S)

    @property
    def record(self) -> dict:
        return self.api.call("GET", f"/v1/vms/{self.id}")

    @property
    def host(self) -> str:
        return self.record["host_id"]

    @property
    def disk(self) -> str:
        return str(self.probe.disk_path(self.host, self.id))

    def ensure(self, state: str) -> None:
        if self.record["state"] == state:
            return
        action, body = ("stop", {"force": True}) if state == "stopped" else ("start", None)
        succeeded(self.api, self.api.call("POST", f"/v1/vms/{self.id}/{action}", json=body), BOOT_TIMEOUT_S)
        assert self.record["state"] == state

    def blklist(self, *flags: str) -> str:
        return self.probe.virsh(self.host, "domblklist", self.id, *flags).stdout

    def snapshots(self) -> list[str]:
        return [s["name"] for s in self.api.call("GET", f"/v1/vms/{self.id}/snapshots")]

    def delete(self) -> None:
        self.api.wait_operation(self.api.call("DELETE", f"/v1/vms/{self.id}")["operation_id"])


@pytest.fixture(scope="module")
def vm(api, probe):
    the_vm = LabVm(api, probe)
    yield the_vm
    the_vm.delete()


@pytest.fixture
def volumes(api):
    made = Volumes(api)
    yield made
    made.cleanup()


def test_data_volume_is_hot_plugged_and_unplugged(stack_cfg, admin_token, api, vm, volumes):
    vm.ensure("running")
    tap = EventTap(stack_cfg.api_url, "vmflow.evt.volume.>", token=admin_token)
    volume = volumes.create(size_gib=1)
    name, path = volume["name"], volume["path"]

    attach = api.call("POST", f"/v1/vms/{vm.id}/volumes/{name}")
    assert attach["operation_id"].startswith(f"volume-{name}-attach-")
    op = succeeded(api, attach)
    assert (op["kind"], op["result"], op["steps_done"]) == ("AttachVolume", "vdb", ["claim", "attach", "confirm"])
    assert path in vm.blklist() and path in vm.blklist("--inactive")  # live and kept in the definition
    assert api.call("GET", f"/v1/volumes/{name}")["vm_id"] == vm.id
    assert name in [v["name"] for v in api.call("GET", f"/v1/vms/{vm.id}/volumes")]

    expect_error(api, "DELETE", f"/v1/volumes/{name}", 409, "detach it first")
    expect_error(api, "POST", f"/v1/vms/{vm.id}/volumes/{name}", 409, "attached to VM")
    expect_error(api, "POST", f"/v1/volumes/{name}/resize", 409, "while it is running", json={"size_gib": 2})
    assert path in vm.blklist()

    detach = api.call("DELETE", f"/v1/vms/{vm.id}/volumes/{name}")
    assert succeeded(api, detach)["kind"] == "DetachVolume"
    assert path not in vm.blklist() and path not in vm.blklist("--inactive")
    assert api.call("GET", f"/v1/volumes/{name}")["vm_id"] is None
    assert vm.record["state"] == "running"
    for event in ("created", "attached", "detached"):
        tap.wait_for(f"vmflow.evt.volume.shared.{name}.{event}")


def test_stopped_vm_gets_a_volume_of_its_hosts_local_pool(stack_cfg, api, vm, volumes):
    vm.ensure("stopped")
    local = volumes.create(pool=f"local-{vm.host}")
    succeeded(api, api.call("POST", f"/v1/volumes/{local['name']}/attach", json={"vm_id": vm.id}))
    assert local["path"] in vm.blklist("--inactive")
    succeeded(api, api.call("POST", f"/v1/volumes/{local['name']}/detach"))
    assert local["path"] not in vm.blklist("--inactive")
    other_hosts = [h for h in stack_cfg.host_ids() if h != vm.host]
    if other_hosts:  # a volume on another host's disk cannot reach this VM
        far = volumes.create(pool=f"local-{other_hosts[0]}")
        expect_error(api, "POST", f"/v1/vms/{vm.id}/volumes/{far['name']}", 409,
                     f"lives in pool local-{other_hosts[0]} of host {other_hosts[0]}")
        assert far["path"] not in vm.blklist("--inactive")
        assert api.call("GET", f"/v1/volumes/{far['name']}")["vm_id"] is None
    root = api.call("GET", f"/v1/vms/{vm.id}/volumes")[0]
    assert root["kind"] == "root" and root["name"] == f"vm-{vm.id}-root"
    expect_error(api, "DELETE", f"/v1/volumes/{root['name']}", 409, "root disk of VM")
    expect_error(api, "POST", f"/v1/volumes/{root['name']}/resize", 409, "root disk", json={"size_gib": 5})


def test_revert_restores_what_the_disk_held_at_the_snapshot(api, vm):
    vm.ensure("stopped")
    disk = vm.disk
    assert reads_pattern(disk, "0x00")
    take = api.call("POST", f"/v1/vms/{vm.id}/snapshots", json={"name": "before"})
    assert take["operation_id"].startswith(f"vm-{vm.id}-snapshot-")
    succeeded(api, take)
    (snapshot,) = [s for s in api.call("GET", f"/v1/vms/{vm.id}/snapshots") if s["name"] == "before"]
    assert snapshot["disks"] == [f"vm-{vm.id}-root"]
    assert "before" in [s["name"] for s in qemu_info(disk).get("snapshots", [])]

    write_pattern(disk, "0xab")  # the guest's disk changes after the snapshot
    assert reads_pattern(disk, "0xab") and not reads_pattern(disk, "0x00")
    succeeded(api, api.call("POST", f"/v1/vms/{vm.id}/snapshots/before/revert"))
    assert reads_pattern(disk, "0x00") and not reads_pattern(disk, "0xab")

    expect_error(api, "POST", f"/v1/vms/{vm.id}/snapshots", 409, "has a snapshot named 'before' already",
                 json={"name": "before"})
    succeeded(api, api.call("DELETE", f"/v1/vms/{vm.id}/snapshots/before"))
    assert "before" not in [s["name"] for s in qemu_info(disk).get("snapshots", [])]
    assert "before" not in vm.snapshots()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../x", "snapshot name must be"), ("a/b", "snapshot name must be"), ("x" * 64, "snapshot name must be"),
     ("1", "starting with a letter"), ("", "snapshot name must be")],
)
def test_bad_snapshot_names_are_refused(api, vm, name, reason):
    before = vm.snapshots()
    expect_error(api, "POST", f"/v1/vms/{vm.id}/snapshots", 422, reason, json={"name": name})
    assert vm.snapshots() == before


def test_unknown_snapshots_and_vms(api, vm):
    for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/revert")]:
        expect_error(api, method, f"/v1/vms/{vm.id}/snapshots/nope{path}", 404, "no snapshot named 'nope'")
        expect_error(api, method, f"/v1/vms/{vm.id}/snapshots/..%2F..{path}", 404, "")
    missing = str(uuid.uuid4())
    for method, path, body in [("GET", "/snapshots", None), ("POST", "/snapshots", {"name": "s"}),
                               ("POST", "/template", {"name": "t"}), ("GET", "/volumes", None),
                               ("POST", "/volumes/x", None)]:
        expect_error(api, method, f"/v1/vms/{missing}{path}", 404, "no VM with id", json=body)


def test_a_running_vm_refuses_snapshots_reverts_and_templates(api, vm):
    vm.ensure("stopped")
    if "kept" not in vm.snapshots():
        succeeded(api, api.call("POST", f"/v1/vms/{vm.id}/snapshots", json={"name": "kept"}))
    vm.ensure("running")
    images = [i["name"] for i in api.call("GET", "/v1/images")]
    expect_error(api, "POST", f"/v1/vms/{vm.id}/snapshots", 409,
                 "cannot take a snapshot of VM", json={"name": "s2"})
    expect_error(api, "POST", f"/v1/vms/{vm.id}/snapshots/kept/revert", 409, "while it is running (needs: stopped)")
    expect_error(api, "DELETE", f"/v1/vms/{vm.id}/snapshots/kept", 409, "while it is running")
    expect_error(api, "POST", f"/v1/vms/{vm.id}/template", 409, "cannot make a template of VM",
                 json={"name": unique("tpl")})
    expect_error(api, "POST", "/v1/images", 409, "while it is running", json={"name": unique("tpl"), "from_vm": vm.id})
    assert vm.snapshots() == ["kept"]
    assert [i["name"] for i in api.call("GET", "/v1/images")] == images
    assert vm.record["state"] == "running"


def test_a_template_of_a_stopped_vm_boots_a_clone(stack_cfg, api, probe, vm):
    vm.ensure("stopped")
    write_pattern(vm.disk, "0xcd", "1M")  # something only this VM's disk holds
    template = unique("tpl")
    accepted = api.call("POST", f"/v1/vms/{vm.id}/template", json={"name": template})
    assert accepted["operation_id"] == f"image-{template}-create"
    assert succeeded(api, accepted)["kind"] == "CreateTemplate"
    clone = None
    try:
        image = api.call("GET", f"/v1/images/{template}")
        assert (image["kind"], image["source_vm"], image["boot"]) == ("template", vm.id, "kernel")
        disk = str(stack_cfg.pool_dir / "images" / template / "disk.qcow2")
        assert "backing-filename" not in qemu_info(disk)  # flattened: standalone
        assert reads_pattern(disk, "0xcd", "1M")
        expect_error(api, "POST", f"/v1/vms/{vm.id}/template", 409, f"an image named '{template}' already exists",
                     json={"name": template})

        clone = LabVm(api, probe, image=template)  # provisioning waits for the boot marker
        console = probe.console_path(clone.host, clone.id)
        assert MARKER in console.read_text(errors="replace")
        expect_error(api, "DELETE", f"/v1/images/{template}", 409, f"vm-{clone.id}-root")
        clone.delete()
        clone = None
        succeeded(api, api.call("DELETE", f"/v1/images/{template}"))
        assert template not in [i["name"] for i in api.call("GET", "/v1/images")]
    finally:
        if clone is not None:
            clone.delete()
        try:
            api.wait_operation(api.call("DELETE", f"/v1/images/{template}")["operation_id"])
        except ApiError:
            pass  # deleted above


def test_post_images_from_vm_makes_a_template_too(api, vm):
    vm.ensure("stopped")
    name = unique("tpl")
    accepted = api.call("POST", "/v1/images", json={"name": name, "from_vm": vm.id, "description": "golden"})
    try:
        succeeded(api, accepted)
        image = api.call("GET", f"/v1/images/{name}")
        assert (image["kind"], image["description"], image["min_memory_mib"]) == ("template", "golden", 96)
    finally:
        api.wait_operation(api.call("DELETE", f"/v1/images/{name}")["operation_id"])
    expect_error(api, "DELETE", "/v1/images/lab-guest", 409, f"vm-{vm.id}-root")
