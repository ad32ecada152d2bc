"""`vmflow up`, `status` and `down` on an isolated stack: down leaves no namespace, daemon or
guest behind, even with a VM running."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy import stack
from deploy.client import VmflowClient
from deploy.processes import is_alive, read_pid


def namespaces_of(lab_name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{lab_name}-")]


def qemu_pids_using(path: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and str(path).encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_status_reports_every_component_healthy(stack_cfg):
    report = stack.status(stack_cfg.root)
    assert {"nats", "temporal", "scheduler", "storage", "orchestrator", "api", "libvirtd h1",
            "host-worker-h1"} <= set(report)
    assert all(healthy for healthy, _ in report.values()), report
    cli = subprocess.run([sys.executable, "-m", "deploy.cli", "status", "--run-dir", str(stack_cfg.root)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "healthy" in cli.stdout and "down" not in cli.stdout


def test_down_stops_exactly_what_up_started(tmp_path_factory):
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-updown-"))
    cfg = stack.StackConfig.isolated(run_dir, f"vmd{os.getpid() % 100000}", host_count=1)
    try:
        stack.up(cfg, say=lambda _m: None)
        names = ["nats", "temporal", "scheduler", "storage", "orchestrator", "api", "host-worker-h1"]
        pids = {name: read_pid(run_dir, name) for name in names}
        assert all(is_alive(pid) for pid in pids.values()), pids
        client = VmflowClient(cfg.api_url, stack.admin_token(cfg))
        accepted = client.create_vm("left-running", 1, 128, 1, "lab-guest")
        assert client.wait_operation(accepted["operation_id"], timeout_s=240)["state"] == "succeeded"
        assert qemu_pids_using(run_dir), "the guest should run before down"
        assert len(namespaces_of(cfg.lab_name)) == 2  # the host and the switch
    finally:
        stack.down(run_dir, say=lambda _m: None)
    assert not any(is_alive(pid) for pid in pids.values())
    assert namespaces_of(cfg.lab_name) == []
    assert qemu_pids_using(run_dir) == []
    assert stack.status(run_dir) == {}
