"""Faults a lab host can suffer, made from outside vmflow (for tests and benchmarks): its power
pulled, its link cut; and putting it back in service afterwards. Plus a watcher that asks every
host's libvirt, every half second, which of them run a VM."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable

from deploy import lab, stack
from deploy.client import ApiError, VmflowClient

HOSTS = ("h1", "h2", "h3")
MARKER = "VMFLOW-GUEST-BOOTED"


def wait_for_value(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """The first truthy answer of ``check``; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:g} s")
        time.sleep(interval_s)


def provision_on(api: VmflowClient, host_id: str, hosts: tuple[str, ...] = HOSTS, **fields) -> dict:
    """A VM that boots on ``host_id`` (the other hosts are disabled meanwhile)."""
    others = [h for h in hosts if h != host_id]
    for other in others:
        api.call("POST", f"/v1/hosts/{other}/disable", json={"reason": "placing a VM on purpose"})
    try:
        body = {"name": f"ha-{uuid.uuid4().hex[:6]}", "vcpus": 1, "memory_mib": 128, "disk_gib": 1,
                "image": "lab-guest", **fields}
        accepted = api.call("POST", "/v1/vms", json=body)
        op = api.wait_operation(accepted["operation_id"], timeout_s=240)
        if op["state"] != "succeeded":
            raise RuntimeError(f"provisioning on {host_id} failed: {op.get('error')}")
    finally:
        for other in others:
            api.call("POST", f"/v1/hosts/{other}/enable")
    return api.call("GET", f"/v1/vms/{accepted['vm']['id']}")


def console_boots(cfg: stack.StackConfig, vm_id: str) -> int:
    """Boot markers on the VM's console log (on the shared pool, whichever host runs it)."""
    path = cfg.console_dir / f"{vm_id}.log"
    return path.read_text(errors="replace").count(MARKER) if path.exists() else 0


def host_state(api: VmflowClient, host_id: str) -> str:
    return api.call("GET", f"/v1/hosts/{host_id}")["state"]


def power_off(cfg: stack.StackConfig, host_id: str) -> None:
    """Pull the plug: libvirtd, every QEMU and the worker of the host die at once."""
    lab.power_off_host(cfg.lab_name, cfg.root / "lab", host_id)


def set_link(cfg: stack.StackConfig, host_id: str, up: bool) -> None:
    subprocess.run(["ip", "-n", f"{cfg.lab_name}-sw", "link", "set", f"v{host_id}", "up" if up else "down"],
                   check=True, timeout=10)


def failover_of(api: VmflowClient, host_id: str, timeout_s: float = 60) -> str:
    """The id of the host's failover operation, once the liveness monitor started it."""
    def started() -> str | None:
        host = api.call("GET", f"/v1/hosts/{host_id}")
        return host["operation_id"] if host["state"] in ("fencing", "fenced", "fence_failed") else None

    return wait_for_value(started, timeout_s, f"{host_id} to be declared failed")


def restore(cfg: stack.StackConfig, api: VmflowClient, host_id: str) -> None:
    """Bring a host back to service: link up, its fencing over (confirmed by hand if the agent
    failed), power on, its worker reporting again, enabled."""
    set_link(cfg, host_id, True)
    wait_for_value(lambda: host_state(api, host_id) != "fencing", 60, f"{host_id}'s fencing to end", 0.5)
    if host_state(api, host_id) == "fence_failed":
        try:
            api.call("POST", f"/v1/hosts/{host_id}/confirm-fenced")
        except ApiError:
            pass
    lab.power_on_host(cfg.lab_name, cfg.root / "lab", host_id)
    wait_for_value(lambda: api.call("GET", f"/v1/hosts/{host_id}")["liveness"] == "up"
                   and host_state(api, host_id) not in ("fencing", "fence_failed"), 90,
                   f"{host_id} to report in again", 0.5)
    api.call("POST", f"/v1/hosts/{host_id}/enable")
    wait_for_value(lambda: host_state(api, host_id) == "up", 60, f"{host_id} up", 0.5)


class DoubleRunWatcher:
    """Asks every host's libvirt (over its unix socket, not through vmflow), every 0.5 s, which
    of them run the VM; counts the samples where more than one did."""

    def __init__(self, uris: dict[str, str], vm_id: str, interval_s: float = 0.5) -> None:
        self.samples = 0
        self.double_runs: list[list[str]] = []
        self._uris, self._vm_id, self._interval_s = uris, vm_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _running_on(self, uri: str) -> bool:
        result = subprocess.run(["virsh", "-q", "-c", uri, "domstate", f"vm-{self._vm_id}"],
                                capture_output=True, text=True, timeout=10)
        return result.returncode == 0 and result.stdout.strip() == "running"

    def _run(self) -> None:
        while not self._stop.is_set():
            running = [h for h, uri in self._uris.items() if self._running_on(uri)]
            self.samples += 1
            if len(running) > 1:
                self.double_runs.append(running)
            time.sleep(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
