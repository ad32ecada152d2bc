"""What a VM's disks do when it moves. A root disk on its host's own pool goes along: copied by
libvirt while the guest runs, copied whole while it is stopped. A data volume on the shared pool
stays attached. Checked with qemu-io and virsh: the data is where the VM now runs, nothing is
left on the old host."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.libvirt_probe import wait_until
from tests.integration.test_migration import MARKER, agree, counters, migrate, provision

PATTERN = ("0x5a", "4M", "64k")  # byte, offset, length


def qemu_io(disk: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)], check=True, capture_output=True,
                   timeout=30)


def power(api, vm_id: str, action: str) -> None:
    body = {"force": True} if action == "stop" else None
    op = api.call("POST", f"/v1/vms/{vm_id}/{action}", json=body)
    assert api.wait_operation(op["operation_id"], timeout_s=240)["state"] == "succeeded"


def succeeded(api, accepted: dict) -> dict:
    op = api.wait_operation(accepted["operation_id"], timeout_s=120)
    assert op["state"] == "succeeded", op
    return op


def root_path(stack_cfg, host: str, vm_id: str) -> Path:
    return stack_cfg.local_pool_dir(host) / "volumes" / f"vm-{vm_id}-root.qcow2"


def test_a_local_disk_moves_with_its_vm_live_and_cold(stack_cfg, api, probe, cleanup):
    vm = provision(api, storage="local")
    cleanup.append(vm["id"])
    home = vm["host_id"]
    assert vm["storage"] == "local"

    def pool_disk(host: str) -> Path:
        return root_path(stack_cfg, host, vm["id"])

    assert probe.disk_path(home, vm["id"]) == pool_disk(home)
    # Data of the VM's own, on the top layer of its disk: the part a move has to carry.
    power(api, vm["id"], "stop")
    qemu_io(pool_disk(home), "write -P {} {} {}".format(*PATTERN))
    power(api, vm["id"], "start")
    console = probe.guest_log_path(home, vm["id"])
    wait_until(lambda: counters(console.read_text(errors="replace")), 60, what="the guest to count")

    # Live: the guest keeps counting, its disk is now on the target's pool and only there.
    target = next(h for h in ("h1", "h2", "h3") if h != home)
    before = counters(console.read_text(errors="replace"))
    op = migrate(api, vm["id"], target_host_id=target)
    assert op["state"] == "succeeded", op
    assert agree(api, probe, vm["id"]) == target
    assert probe.disk_path(target, vm["id"]) == pool_disk(target)
    assert not pool_disk(home).exists()
    wait_until(lambda: counters(console.read_text(errors="replace"))[-1] > before[-1] + 1, 20,
               what="the counter to go on after the move")
    assert console.read_text(errors="replace").count(MARKER) == 2  # the first boot and the restart only

    # Cold, back home: the whole disk is copied, the data with it.
    power(api, vm["id"], "stop")
    assert probe.disk_path(target, vm["id"]) == pool_disk(target)  # the kept definition moved too
    qemu_io(pool_disk(target), "read -P {} {} {}".format(*PATTERN))
    op = migrate(api, vm["id"], target_host_id=home)
    assert op["state"] == "succeeded", op
    assert agree(api, probe, vm["id"]) == home and probe.state(home, vm["id"]) == "shut off"
    assert probe.disk_path(home, vm["id"]) == pool_disk(home) and not pool_disk(target).exists()
    qemu_io(pool_disk(home), "read -P {} {} {}".format(*PATTERN))
    power(api, vm["id"], "start")
    assert probe.state(home, vm["id"]) == "running"

    op = api.wait_operation(api.call("DELETE", f"/v1/vms/{vm['id']}")["operation_id"], timeout_s=120)
    assert op["state"] == "succeeded"
    assert probe.where(vm["id"]) == [] and not any(pool_disk(h).exists() for h in ("h1", "h2", "h3"))


def test_what_cannot_move_with_a_local_disk_is_refused_and_nothing_is_left(stack_cfg, api, probe, cleanup):
    vm = provision(api, storage="local")
    cleanup.append(vm["id"])
    home = vm["host_id"]
    target = next(h for h in ("h1", "h2", "h3") if h != home)

    def refused(reason: str) -> None:
        op = migrate(api, vm["id"], target_host_id=target)
        assert op["state"] == "failed" and reason in op["error"]["message"], op
        assert agree(api, probe, vm["id"]) == home
        assert not root_path(stack_cfg, target, vm["id"]).exists()
        assert root_path(stack_cfg, home, vm["id"]).exists()

    # A data volume on the host's own disk would be left behind: detach it first.
    name = f"data-{vm['id'][:8]}"
    succeeded(api, api.call("POST", "/v1/volumes", json={"name": name, "pool": f"local-{home}", "size_gib": 1}))
    succeeded(api, api.call("POST", f"/v1/volumes/{name}/attach", json={"vm_id": vm["id"]}))
    refused(f"data volume(s) {name} on {home}'s own pool cannot move with the VM")
    assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "running"
    succeeded(api, api.call("POST", f"/v1/volumes/{name}/detach"))
    succeeded(api, api.call("DELETE", f"/v1/volumes/{name}"))

    # Snapshots live inside the disk file: a live copy would lose them, a cold copy keeps them.
    power(api, vm["id"], "stop")
    succeeded(api, api.call("POST", f"/v1/vms/{vm['id']}/snapshots", json={"name": "keep"}))
    power(api, vm["id"], "start")
    refused("has 1 snapshot(s), which a live copy of its disk would lose")
    assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "running"
    power(api, vm["id"], "stop")
    op = migrate(api, vm["id"], target_host_id=target)
    assert op["state"] == "succeeded", op
    assert agree(api, probe, vm["id"]) == target and not root_path(stack_cfg, home, vm["id"]).exists()
    assert [s["name"] for s in api.call("GET", f"/v1/vms/{vm['id']}/snapshots")] == ["keep"]


def test_a_shared_data_volume_stays_attached_across_a_move(stack_cfg, api, probe, cleanup):
    vm = provision(api)
    cleanup.append(vm["id"])
    name = f"shared-{vm['id'][:8]}"
    succeeded(api, api.call("POST", "/v1/volumes", json={"name": name, "pool": "shared", "size_gib": 1}))
    path = api.call("GET", f"/v1/volumes/{name}")["path"]
    qemu_io(Path(path), "write -P {} {} {}".format(*PATTERN))
    succeeded(api, api.call("POST", f"/v1/volumes/{name}/attach", json={"vm_id": vm["id"]}))
    try:
        target = next(h for h in ("h1", "h2", "h3") if h != vm["host_id"])
        op = migrate(api, vm["id"], target_host_id=target)
        assert op["state"] == "succeeded", op
        assert agree(api, probe, vm["id"]) == target
        for flags in ((), ("--inactive",)):  # the running domain and the kept definition
            assert path in probe.virsh(target, "domblklist", vm["id"], *flags).stdout
        assert api.call("GET", f"/v1/volumes/{name}")["vm_id"] == vm["id"]
        power(api, vm["id"], "stop")
        qemu_io(Path(path), "read -P {} {} {}".format(*PATTERN))
    finally:
        succeeded(api, api.call("POST", f"/v1/volumes/{name}/detach"))
        succeeded(api, api.call("DELETE", f"/v1/volumes/{name}"))
