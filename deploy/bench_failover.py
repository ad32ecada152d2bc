"""Failover time: a host loses its power (or its network), to each HA guest's boot marker on its
new host, against the same guest booted directly through libvirt on a healthy host.

Per trial, interleaved with its baseline so both see the same machine noise:
- platform: an HA VM runs on the victim host; at t0 the host's power is pulled (every process of
  it killed at once) or its link cut. Phases, seen from outside through the API and the guest's
  console, polled every 50 ms: detection (t0 -> the host is fencing), fence (-> fenced),
  restart (-> the boot marker on the console on the new host), total (t0 -> boot marker).
  In network mode a watcher asks every host's libvirt every 0.5 s which of them run the VM and
  counts the moments two did (must be 0). The host is put back in service afterwards, untimed.
- baseline: the same guest defined and started on another host through libvirt, to its marker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import lab, lab_faults
from deploy.bench import (
    BenchError,
    LatencyStats,
    _bench_image,
    _boot_directly_once,
    _running_stack,
    summarize,
)
from deploy.client import VmflowClient
from services.host_worker.hypervisor import Hypervisor

POLL_INTERVAL_S = 0.05
PHASE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Trial:
    detection_s: float
    fence_s: float
    restart_s: float
    total_s: float
    baseline_s: float
    double_runs: int


@dataclass(frozen=True)
class FailoverFigures:
    cut: str
    trials: tuple[Trial, ...]
    detection: LatencyStats
    fence: LatencyStats
    restart: LatencyStats
    total: LatencyStats
    baseline: LatencyStats
    double_runs: int


def figures(cut: str, trials: list[Trial]) -> FailoverFigures:
    return FailoverFigures(
        cut, tuple(trials),
        summarize([t.detection_s for t in trials]), summarize([t.fence_s for t in trials]),
        summarize([t.restart_s for t in trials]), summarize([t.total_s for t in trials]),
        summarize([t.baseline_s for t in trials]), sum(t.double_runs for t in trials),
    )


def format_figures(f: FailoverFigures) -> list[str]:
    lines = [f"{'':10} {'n':>3} {'p50_s':>8} {'p95_s':>8} {'min_s':>8} {'max_s':>8}"]
    for label, stats in (("detection", f.detection), ("fence", f.fence), ("restart", f.restart),
                         ("total", f.total), ("baseline", f.baseline)):
        lines.append(f"{label:10} {stats.n:>3} {stats.p50_s:>8.3f} {stats.p95_s:>8.3f}"
                     f" {stats.min_s:>8.3f} {stats.max_s:>8.3f}")
    return lines + [
        f"total/baseline: p50 {f.total.p50_s / f.baseline.p50_s:.2f}x, p95 {f.total.p95_s / f.baseline.p95_s:.2f}x",
        f"cut: {f.cut}; VM seen running on two hosts at once: {f.double_runs} time(s)",
        "total: host cut -> boot marker of the HA guest on its new host",
        "baseline: libvirt define -> boot marker of the same guest on a healthy host",
    ]


def _one_trial(cfg, api: VmflowClient, hv: Hypervisor, image, victim: str, cut: str, uris: dict[str, str],
               tag: str) -> Trial:
    baseline_s = _boot_directly_once(hv, image, 128, cfg.root, f"bench-{tag}-base")
    vm = lab_faults.provision_on(api, victim, hosts=tuple(uris), ha=True, name=f"bench-{tag}")
    before = lab_faults.console_boots(cfg, vm["id"])
    watcher = lab_faults.DoubleRunWatcher(uris, vm["id"]) if cut == "network" else None
    try:
        t0 = time.monotonic()
        if cut == "network":
            lab_faults.set_link(cfg, victim, False)
        else:
            lab_faults.power_off(cfg, victim)
        seen: dict[str, float] = {}
        deadline = t0 + PHASE_TIMEOUT_S
        while "booted" not in seen:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"no failover of {victim} within {PHASE_TIMEOUT_S:g} s: reached {sorted(seen)}")
            if "fenced" not in seen:
                state = lab_faults.host_state(api, victim)
                if state in ("fencing", "fenced", "fence_failed"):
                    seen.setdefault("detected", now)
                if state == "fenced":
                    seen["fenced"] = now
                if state == "fence_failed":
                    raise BenchError(f"fencing {victim} failed")
            if lab_faults.console_boots(cfg, vm["id"]) > before:
                seen["booted"] = now
                seen.setdefault("detected", now)
                seen.setdefault("fenced", now)
            time.sleep(POLL_INTERVAL_S)
        time.sleep(2)  # let the watcher look a little longer
    finally:
        if watcher is not None:
            watcher.stop()
        lab_faults.restore(cfg, api, victim)
        api.wait_operation(api.call("DELETE", f"/v1/vms/{vm['id']}")["operation_id"], timeout_s=120)
    return Trial(seen["detected"] - t0, seen["fenced"] - seen["detected"], seen["booted"] - seen["fenced"],
                 seen["booted"] - t0, baseline_s, len(watcher.double_runs) if watcher else 0)


def run_failover_bench(run_dir: Path, count: int, cut: str, say: Callable[[str], None],
                       token: str | None = None) -> FailoverFigures:
    """Fail ``count`` hosts over one at a time (cycling through the lab's hosts) and boot the
    same guest directly as often; print the figures through ``say`` and return them. Every
    host is back in service and no VM is left when it returns. ``token``: an admin's API token
    (the bench disables and enables hosts)."""
    if cut not in ("power", "network"):
        raise BenchError("cut must be 'power' or 'network'")
    cfg = _running_stack(run_dir)
    image = _bench_image(cfg)
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    if the_lab is None or len(the_lab.hosts) < 3:
        raise BenchError("the failover benchmark needs a lab of at least 3 hosts (vmflow up --hosts 3)")
    uris = {h.host_id: h.unix_uri for h in the_lab.hosts}
    hosts = list(uris)
    api = VmflowClient(cfg.api_url, token)
    say(f"failing over {count} host(s) by {cut} cut: an HA 128 MiB '{image.name}' guest each, vs a direct boot")
    trials: list[Trial] = []
    try:
        for i in range(count):
            victim = hosts[i % len(hosts)]
            healthy = hosts[(i + 1) % len(hosts)]
            hv = Hypervisor(uris[healthy])
            try:
                trial = _one_trial(cfg, api, hv, image, victim, cut, uris, f"{uuid.uuid4().hex[:6]}-{i}")
            finally:
                hv.close()
            trials.append(trial)
            say(f"  {i + 1}/{count} {victim}: detection {trial.detection_s:.2f} s, fence {trial.fence_s:.2f} s, "
                f"restart {trial.restart_s:.2f} s, total {trial.total_s:.2f} s; baseline {trial.baseline_s:.2f} s"
                f"{f'; double runs {trial.double_runs}' if cut == 'network' else ''}")
    finally:
        api.close()
    result = figures(cut, trials)
    for line in format_figures(result):
        say(line)
    return result
