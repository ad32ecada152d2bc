"""Live migration: the same guest moved by a bare libvirt call and by vmflow, in one run.

Both move a running 128 MiB lab guest back and forth between lab hosts h1 and h2, interleaved
(baseline i, platform i, ...), so both see the same machine noise.

- baseline: one peer-to-peer ``migrateToURI3`` through the project's libvirt adapter, with the
  parameters the platform's default convergence policy starts with (auto-converge, its first
  downtime limit), timed around the call; downtime from libvirt's completed job stats.
- platform: POST /v1/vms/{id}/migrate -> the LiveMigrate operation is done (checks, placement
  on the target, the same libvirt migration with its convergence loop, the inventory record);
  downtime from the same job stats, as the operation reports them.

With ``storage="local"`` each root disk lives on its host's own pool and moves along: the
baseline creates the empty overlay on the destination and copies the disk's top layer in the
same libvirt call (NON_SHARED_INC), timed together, as the platform does.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from deploy import lab
from deploy.bench import (
    POLL_INTERVAL_S,
    _baseline_spec,
    _bench_image,
    _check_succeeded,
    _create_overlay,
    _running_stack,
    _wait_for_marker,
    summarize,
)
from deploy.client import VmflowClient
from services.host_worker.domain_xml import build_domain_xml, console_path
from services.host_worker.hypervisor import Hypervisor
from shared.migration import ConvergencePolicy

HOSTS = ("h1", "h2")
POLICY = ConvergencePolicy()  # what the API asks for when a request names no policy
DOWNTIME = re.compile(r"downtime (\d+) ms")


def _percentile_line(label: str, samples_s: list[float], downtimes_ms: list[int]) -> str:
    stats = summarize(samples_s)
    downtime = summarize([d / 1000 for d in downtimes_ms]) if downtimes_ms else None
    down = f"{downtime.p50_s * 1000:>8.0f} {downtime.max_s * 1000:>8.0f}" if downtime else f"{'-':>8} {'-':>8}"
    return f"{label:10} {stats.n:>3} {stats.p50_s:>8.3f} {stats.p95_s:>8.3f} {down}"


def run_migration_bench(run_dir: Path, count: int, say: Callable[[str], None], storage: str = "shared",
                        token: str | None = None) -> None:
    """``token``: the API token the platform side uses (an admin's: migration is the fleet's)."""
    cfg = _running_stack(run_dir)
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    hosts = {h.host_id: h for h in the_lab.hosts} if the_lab else {}
    if not all(h in hosts for h in HOSTS):
        raise RuntimeError(f"the stack needs lab hosts {', '.join(HOSTS)} (vmflow up --hosts 2 or more)")
    image = _bench_image(cfg)
    client = VmflowClient(cfg.api_url, token)
    scratch = Path(tempfile.mkdtemp(prefix="bench-migrate-", dir=cfg.root))
    vm_id = str(uuid.uuid4())
    platform_vm = None
    base_s, base_down, plat_s, plat_down = [], [], [], []
    try:
        local = storage == "local"
        disk_of = {h: scratch / h / "disk.qcow2" if local else scratch / "disk.qcow2" for h in HOSTS}
        for path in set(disk_of.values()):
            path.parent.mkdir(exist_ok=True)
        disk = disk_of["h1"]
        _create_overlay(Path(image.disk_path), disk)
        here = Hypervisor(hosts["h1"].unix_uri)
        here.define(build_domain_xml(_baseline_spec(vm_id, "bench-baseline", image, 128, disk), str(scratch)))
        here.start(vm_id)
        _wait_for_marker(Path(console_path(str(scratch), vm_id)), image.boot_marker or "", 120)
        accepted = client.create_vm(f"bench-mig-{vm_id[:6]}", 1, 128, 1, image.name, storage)
        _check_succeeded(client.wait_operation(accepted["operation_id"], 300), "provisioning")
        platform_vm = accepted["vm"]["id"]
        where = "h1"
        for i in range(count):
            there = HOSTS[1] if where == HOSTS[0] else HOSTS[0]
            source = Hypervisor(hosts[where].unix_uri)
            started = time.monotonic()
            moves = None
            if local:
                disk_of[there].unlink(missing_ok=True)
                _create_overlay(Path(image.disk_path), disk_of[there])
                moves = {str(disk_of[where]): str(disk_of[there])}
            done = source.migrate_live(vm_id, hosts[there].tcp_uri, disk_moves=moves,
                                       auto_converge=POLICY.auto_converge,
                                       initial_downtime_ms=POLICY.downtime_steps_ms[0])
            base_s.append(time.monotonic() - started)
            if done and done.downtime_ms is not None:
                base_down.append(done.downtime_ms)
            source.close()
            vm_host = client.call("GET", f"/v1/vms/{platform_vm}")["host_id"]
            started = time.monotonic()
            moved = client.call("POST", f"/v1/vms/{platform_vm}/migrate", json={})
            op = client.wait_operation(moved["operation_id"], 300, interval_s=POLL_INTERVAL_S)
            plat_s.append(time.monotonic() - started)
            _check_succeeded(op, f"migrating from {vm_host}")
            plat_down += [int(m.group(1)) for line in op["details"] if (m := DOWNTIME.search(line))]
            say(f"  {i + 1}/{count}: baseline {base_s[-1]:.3f} s, platform {plat_s[-1]:.3f} s")
            where = there
        say(f"root disks: {storage}")
        say(f"{'':10} {'n':>3} {'p50_s':>8} {'p95_s':>8} {'down_p50':>8} {'down_max':>8}")
        say(_percentile_line("platform", plat_s, plat_down))
        say(_percentile_line("baseline", base_s, base_down))
        say(f"platform/baseline: p50 {summarize(plat_s).p50_s / summarize(base_s).p50_s:.2f}x, "
            f"p95 {summarize(plat_s).p95_s / summarize(base_s).p95_s:.2f}x (downtime in ms)")
    finally:
        for host_id in HOSTS:
            Hypervisor(hosts[host_id].unix_uri).undefine(vm_id)
        if platform_vm:
            client.wait_operation(client.call("DELETE", f"/v1/vms/{platform_vm}")["operation_id"], 120)
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)
