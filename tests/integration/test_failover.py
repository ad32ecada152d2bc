"""What happens without vmflow asking, on the real lab: a guest that crashes, a host that loses
its power or its network, a fence agent that fails, the control plane restarting. Checked from
outside vmflow: every host's libvirt, the guests' own consoles."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import signal
import subprocess
import time
import uuid

import pytest
from temporalio.client import Client

from deploy import processes, stack
from deploy.client import ApiError
from deploy.console_driver import ConsoleDriver
from tests.integration.event_tap import EventTap
from tests.integration.failover_lab import (
    DoubleRunWatcher,
    console_boots,
    failover_of,
    fence_agent,
    host_state,
    power_off,
    provision_on,
    restore,
    set_link,
)
from tests.integration.libvirt_probe import wait_until
from tests.integration.metrics_scrape import scrape, scrape_schedulers, value
from tests.integration.test_networks import (
    create_network,
    delete_network,
    guest_address,
)


def qemu_pid(vm_id: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"guest=vm-{vm_id}"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def vm_view(api, vm_id: str) -> dict:
    return api.call("GET", f"/v1/vms/{vm_id}")


def test_a_crashed_guest_is_seen_at_once_and_restarts_in_place(stack_cfg, admin_token, api, probe, cleanup):
    tap = EventTap(stack_cfg.api_url, token=admin_token)
    vm = provision_on(api, "h1")
    keep_down = provision_on(api, "h1", on_crash="none")
    cleanup.extend([vm["id"], keep_down["id"]])
    before = console_boots(stack_cfg, vm["id"])

    for victim in (vm, keep_down):
        subprocess.run(["kill", "-9", str(qemu_pid(victim["id"]))], check=True)
    killed_s = time.time()

    def state_events(vm_id: str) -> list[dict]:
        return [e for e in tap.events if e["subject"].endswith(f".{vm_id}.state")]

    crashed = wait_until(lambda: [e for e in state_events(vm["id"]) if e["data"]["state"] == "crashed"], 10,
                         what="the crash on the event stream")
    assert crashed[0]["received_s"] - killed_s < 2.0, "the crash reached SSE more than 2 s after the kill"
    assert "crashed" in crashed[0]["data"]["error"]
    # The default crash policy restarts it in place: a new boot on the same host.
    wait_until(lambda: vm_view(api, vm["id"])["state"] == "running" and console_boots(stack_cfg, vm["id"]) > before,
               60, what="the guest to boot again in place")
    assert probe.where(vm["id"]) == ["h1"] and probe.state("h1", vm["id"]) == "running"
    # The one whose policy says none stays crashed, and says why.
    wait_until(lambda: vm_view(api, keep_down["id"])["state"] == "crashed", 10, what="crashed state")
    assert probe.state("h1", keep_down["id"]) == "shut off"
    assert "left crashed (policy 'none'" in vm_view(api, keep_down["id"])["error"]
    tap.close()


def test_a_guest_stopped_or_defined_outside_vmflow(stack_cfg, admin_token, api, probe, cleanup):
    tap = EventTap(stack_cfg.api_url, token=admin_token)
    vm = provision_on(api, "h2")
    cleanup.append(vm["id"])
    probe.virsh("h2", "destroy", f"vm-{vm['id']}")
    wait_until(lambda: vm_view(api, vm["id"])["state"] == "stopped", 5, what="the inventory to say stopped")
    probe.virsh("h2", "start", f"vm-{vm['id']}")
    wait_until(lambda: vm_view(api, vm["id"])["state"] == "running", 5, what="the inventory to say running")

    # A domain vmflow never defined: reported, never adopted.
    stranger = str(uuid.uuid4())
    xml = (f"<domain type='qemu'><name>stranger-{stranger[:8]}</name><uuid>{stranger}</uuid>"
           "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    path = stack_cfg.root / f"stranger-{stranger[:8]}.xml"
    path.write_text(xml)
    probe.virsh("h2", "define", str(path))
    try:
        wait_until(lambda: tap.subjects_for("h2.unmanaged_domain"), 20, what="the unmanaged domain event")
        assert stranger not in [v["id"] for v in api.call("GET", "/v1/vms")]
        assert stranger in probe.domain_uuids("h2")  # reported, not touched
    finally:
        probe.virsh("h2", "undefine", f"stranger-{stranger[:8]}", check=False)
        tap.close()


def test_host_power_loss_fails_ha_vms_over_and_the_host_comes_back_clean(stack_cfg, admin_token, api, probe,
                                                                           failover_network,
                                                                           cleanup):  # VMs go before the network
    # The HA VM has a NIC: its address must be the same on its new host, as the guest sees it.
    ha = provision_on(api, "h3", ha=True, restart_priority=10, networks=[{"network_id": failover_network}])
    plain = provision_on(api, "h3")
    cleanup.extend([ha["id"], plain["id"]])
    before = console_boots(stack_cfg, ha["id"])
    detected, recovered = _failover_timings(stack_cfg)
    try:
        power_off(stack_cfg, "h3")
        op_id = failover_of(api, "h3")
        op = api.wait_operation(op_id, timeout_s=120)
        assert op["state"] == "succeeded", op
        assert op["kind"] == "HostFailover" and op_id.startswith("host-h3-failover-")
        # The metrics saw it once: detected by the scheduler, recovered by the orchestrator.
        assert _failover_timings(stack_cfg) == (detected + 1, recovered + 1)
        assert op["details"][1] == "fenced: h3 is off"
        moved = vm_view(api, ha["id"])
        assert moved["state"] == "running" and moved["host_id"] in ("h1", "h2")
        assert probe.where(ha["id"]) == [moved["host_id"]]
        assert console_boots(stack_cfg, ha["id"]) > before  # it booted again over there
        assert moved["nics"] == ha["nics"]
        with ConsoleDriver.for_vm(stack_cfg.api_url, ha["id"], token=admin_token) as console:
            assert guest_address(console) == ha["nics"][0]["ip"]
        left = vm_view(api, plain["id"])
        assert left["state"] == "error" and left["host_id"] == "h3" and "not HA" in left["error"]
        assert host_state(api, "h3") == "fenced"
        with pytest.raises(ApiError, match="409"):  # it is fenced, not waiting for a confirmation
            api.call("POST", "/v1/hosts/h3/confirm-fenced")
    finally:
        restore(stack_cfg, api, "h3")
    # Back: the stale copy of the moved VM is gone from h3, the other is still defined there.
    wait_until(lambda: ha["id"] not in probe.domain_uuids("h3"), 30, what="the stale copy to go")
    assert plain["id"] in probe.domain_uuids("h3")
    assert probe.where(ha["id"]) == [vm_view(api, ha["id"])["host_id"]]
    # Its capacity is back: the VM left in error starts there again.
    op = api.wait_operation(api.call("POST", f"/v1/vms/{plain['id']}/start")["operation_id"], timeout_s=120)
    assert op["state"] == "succeeded", op
    assert probe.where(plain["id"]) == ["h3"]


def _failover_timings(stack_cfg) -> tuple[float, float]:
    """How many failovers the scheduler timed the detection of, and the orchestrator the recovery."""
    return (value(scrape_schedulers(stack_cfg), "vmflow_failover_detection_seconds_count"),
            value(scrape(stack_cfg, "orchestrator"), "vmflow_failover_recovery_seconds_count"))


@pytest.fixture
def failover_network(api):
    network = create_network(api, "10.49.0.0/24")
    yield network["id"]
    delete_network(api, network["id"])


def test_a_partitioned_host_is_fenced_before_its_vms_run_elsewhere(stack_cfg, api, probe, cleanup):
    vm = provision_on(api, "h2", ha=True)
    cleanup.append(vm["id"])
    watcher = DoubleRunWatcher(probe.uris, vm["id"])
    try:
        set_link(stack_cfg, "h2", up=False)  # the guest keeps running; its host is cut off
        time.sleep(2)
        assert probe.state("h2", vm["id"]) == "running"
        op = api.wait_operation(failover_of(api, "h2"), timeout_s=120)
        assert op["state"] == "succeeded", op
        fenced_at = op["details"].index("fenced: h2 is off")
        restarted_at = next(i for i, d in enumerate(op["details"]) if "restarted on" in d)
        assert fenced_at < restarted_at
        moved = vm_view(api, vm["id"])
        assert moved["state"] == "running" and moved["host_id"] != "h2"
        time.sleep(2)
    finally:
        watcher.stop()
        restore(stack_cfg, api, "h2")
    assert watcher.samples > 10
    assert watcher.double_runs == [], f"the VM ran on two hosts at once: {watcher.double_runs}"


def test_a_failing_fence_agent_restarts_nothing_until_an_operator_confirms(stack_cfg, api, probe, cleanup):
    vm = provision_on(api, "h1", ha=True)
    cleanup.append(vm["id"])
    with fence_agent(stack_cfg, "h1", ["/bin/false"]):
        try:
            power_off(stack_cfg, "h1")  # off indeed: what the operator will go and check
            failover_of(api, "h1")
            wait_until(lambda: host_state(api, "h1") == "fence_failed", 60, what="fence_failed")
            host = api.call("GET", "/v1/hosts/h1")
            assert "fencing failed after 4 attempts" in host["state_reason"]
            time.sleep(2)
            assert vm_view(api, vm["id"])["host_id"] == "h1" and probe.where(vm["id"]) == []
            with pytest.raises(ApiError, match="409"):  # a host that is up is never confirmed off
                api.call("POST", "/v1/hosts/h2/confirm-fenced")
            with pytest.raises(ApiError, match="409"):  # nor returned to service meanwhile
                api.call("POST", "/v1/hosts/h1/enable")
            confirmed = api.call("POST", "/v1/hosts/h1/confirm-fenced")
            op = api.wait_operation(confirmed["operation_id"], timeout_s=120)
            assert op["state"] == "succeeded", op
            assert "an operator confirmed h1 is off" in op["details"]
            moved = vm_view(api, vm["id"])
            assert moved["state"] == "running" and probe.where(vm["id"]) == [moved["host_id"]] != ["h1"]
        finally:
            restore(stack_cfg, api, "h1")


def _failovers(stack_cfg) -> int:
    async def count() -> int:
        client = await Client.connect(stack_cfg.temporal_address)
        return len([w async for w in client.list_workflows('WorkflowType = "HostFailover"')])
    return asyncio.run(count())


def test_control_plane_restarts_fail_nothing_over_and_refuse_no_provision(stack_cfg, api, probe, cleanup):
    failovers = _failovers(stack_cfg)

    def provision_now() -> None:
        deadline = time.monotonic() + 30
        while True:  # the API answers 503 while NATS itself is away
            try:
                accepted = api.create_vm(f"cp-{uuid.uuid4().hex[:6]}", 1, 128, 1, "lab-guest")
                break
            except ApiError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        cleanup.append(accepted["vm"]["id"])
        op = api.wait_operation(accepted["operation_id"], timeout_s=240)
        assert op["state"] == "succeeded", op

    processes.crash_process(stack_cfg.root, "nats")
    time.sleep(2)
    stack.start_nats(stack_cfg)
    provision_now()

    processes.crash_process(stack_cfg.root, "temporal")
    time.sleep(1)
    stack.start_temporal(stack_cfg)
    provision_now()

    processes.crash_process(stack_cfg.root, "scheduler")  # the supervisor brings it back
    provision_now()

    time.sleep(8)  # longer than the failure timeout: a late false verdict would show now
    assert _failovers(stack_cfg) == failovers
    assert [h["state"] for h in api.call("GET", "/v1/hosts")] == ["up", "up", "up"]


def test_a_hung_worker_on_a_live_host_is_not_a_dead_host(stack_cfg, api, probe, cleanup):
    """The worker freezes (SIGSTOP: alive to its supervisor, silent to everyone): its peers still
    reach the host's libvirt, so the host is worker_silent, never fenced, and its guest runs on."""
    vm = provision_on(api, "h2", ha=True)
    cleanup.append(vm["id"])
    failovers = _failovers(stack_cfg)
    worker = processes.read_pid(stack_cfg.root, "host-worker-h2")
    os.kill(worker, signal.SIGSTOP)
    try:
        # Each scheduler replica judges on its own look (every 0.5 s): one answer says both.
        wait_until(lambda: (h2 := api.call("GET", "/v1/hosts/h2"))["state"] == "worker_silent"
                   and "peers reach its libvirt" in h2["state_reason"], 20, what="h2 to be worker_silent")
        time.sleep(8)  # well past the failure timeout
        assert host_state(api, "h2") == "worker_silent"
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: host_state(api, "h2") == "up", 20, what="h2 up again")
    assert _failovers(stack_cfg) == failovers
    assert probe.where(vm["id"]) == ["h2"] and vm_view(api, vm["id"])["state"] == "running"


def test_an_operation_resumes_soon_after_every_host_worker_died(stack_cfg, api, cleanup):
    accepted = api.create_vm(f"wk-{uuid.uuid4().hex[:6]}", 1, 128, 1, "lab-guest")
    cleanup.append(accepted["vm"]["id"])
    op_id = accepted["operation_id"]
    wait_until(lambda: api.call("GET", f"/v1/operations/{op_id}")["step"] in ("start", "wait_booted"), 60,
               interval_s=0.05, what="the guest to be starting")
    pids = {h: processes.read_pid(stack_cfg.root, f"host-worker-{h}") for h in ("h1", "h2", "h3")}
    killed_s = time.monotonic()
    for host in pids:
        assert processes.crash_process(stack_cfg.root, f"host-worker-{host}")
    wait_until(lambda: all(processes.read_pid(stack_cfg.root, f"host-worker-{h}") not in (None, pid)
                           and processes.is_alive(processes.read_pid(stack_cfg.root, f"host-worker-{h}"))
                           for h, pid in pids.items()), 10, what="the supervisor to restart the workers")
    op = api.wait_operation(op_id, timeout_s=120)
    assert op["state"] == "succeeded", op
    assert time.monotonic() - killed_s < 35, "the operation waited long for the new workers"
    restarts = (stack_cfg.root / "logs" / "supervisor.log").read_text()
    assert all(f'"name": "host-worker-{h}"' in restarts for h in pids)


def test_after_down_and_up_the_vms_that_ran_run_again(stack_cfg, api, probe, cleanup):
    running = provision_on(api, "h1")
    stopped = provision_on(api, "h2")
    cleanup.extend([running["id"], stopped["id"]])
    op = api.wait_operation(api.call("POST", f"/v1/vms/{stopped['id']}/stop", json={"force": True})["operation_id"])
    assert op["state"] == "succeeded", op
    stack.down(stack_cfg.root, say=lambda _msg: None)  # destroys every guest and definition
    stack.up(stack_cfg, say=lambda _msg: None)
    wait_until(lambda: vm_view(api, running["id"])["state"] == "running" and probe.where(running["id"]) == ["h1"],
               120, interval_s=0.5, what="the VM that ran to run again")
    wait_until(lambda: stopped["id"] in probe.domain_uuids("h2"), 60, what="the stopped VM to be defined again")
    assert vm_view(api, stopped["id"])["state"] == "stopped" and probe.state("h2", stopped["id"]) == "shut off"


def lease_holders(stack_cfg, disk: str) -> list[str]:
    """Which processes hold the disk's lease (libvirt's lockd names it by the path's SHA-256)."""
    lease = stack_cfg.pool_dir / "leases" / hashlib.sha256(disk.encode()).hexdigest()
    out = subprocess.run(["lslocks", "-n", "-o", "PID,PATH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[-1] == str(lease)]


def lease_is_free(stack_cfg, disk: str) -> bool:
    """Try to take the lease from outside, as a second host's lock daemon would."""
    lease = stack_cfg.pool_dir / "leases" / hashlib.sha256(disk.encode()).hexdigest()
    fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases it if taken
    return True


def test_a_running_vms_disk_carries_a_lease_no_other_host_can_take(stack_cfg, api, probe, cleanup):
    """The second guard behind fencing: while a guest runs, its host's lock daemon holds a lease
    on each of its disks, in a lockspace on the shared pool; another host's daemon cannot take
    it, so a second QEMU on that disk never gets its CPUs started (libvirt's lockd; QEMU's own
    image lock alone does not hold on real NFS). The lease goes with the guest."""
    vm = provision_on(api, "h1")
    cleanup.append(vm["id"])
    disk = str(probe.disk_path("h1", vm["id"]))
    holders = lease_holders(stack_cfg, disk)
    assert len(holders) == 1
    assert subprocess.run(["ip", "netns", "identify", holders[0]], capture_output=True, text=True
                          ).stdout.strip() == f"{stack_cfg.lab_name}-h1"
    assert not lease_is_free(stack_cfg, disk)
    op = api.wait_operation(api.call("POST", f"/v1/vms/{vm['id']}/stop", json={"force": True})["operation_id"])
    assert op["state"] == "succeeded", op
    assert lease_holders(stack_cfg, disk) == [] and lease_is_free(stack_cfg, disk)
