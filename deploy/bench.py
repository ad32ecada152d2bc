"""Provisioning latency: the platform against the same guest started directly through libvirt.

Both are measured in one run, interleaved (baseline i, platform i, baseline i+1, ...), so that
both see the same machine noise.

- platform: POST /v1/vms -> the ProvisionVm operation is done. That covers placement, the qcow2
  volume's creation, define, start, the boot marker on the guest's console, the inventory update,
  plus the API and Temporal round trips. Each VM is deleted afterwards, untimed.
- baseline: the qcow2 overlay on the image (the volume the platform makes) -> libvirt define ->
  start -> the boot marker on the console, on lab host h1, through the project's own adapter.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy import lab, stack
from deploy.client import ApiError, VmflowClient
from services.host_worker.console import count_marker
from services.host_worker.domain_xml import build_domain_xml, console_path
from services.host_worker.hypervisor import Hypervisor
from services.storage.catalog import ImageCatalog
from shared.models import DomainSpec, Image

BENCH_IMAGE = stack.GUEST_IMAGE
BASELINE_HOST_ID = "h1"
POLL_INTERVAL_S = 0.05  # the same resolution for both sides
BOOT_TIMEOUT_S = 120.0
OPERATION_TIMEOUT_S = 300.0
PERCENTILE_METHOD = "linear interpolation (numpy's default)"


class BenchError(RuntimeError):
    """The benchmark cannot run (no stack, no lab host, no image) or a measured step failed."""


# --- figures: pure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    n: int
    p50_s: float
    p95_s: float
    min_s: float
    max_s: float


@dataclass(frozen=True)
class BenchResult:
    memory_mib: int
    platform_samples_s: tuple[float, ...]
    baseline_samples_s: tuple[float, ...]
    platform: LatencyStats
    baseline: LatencyStats
    p50_ratio: float  # platform / baseline
    p95_ratio: float


def percentile(samples: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (0-100) of `samples`, by linear interpolation between the closest
    ranks: with the samples sorted, rank = pct/100 * (n - 1), and a fractional rank interpolates
    between its two neighbours (Hyndman & Fan type 7, numpy's default). p0 is the minimum, p100
    the maximum. Raises ValueError for no samples or `pct` outside 0-100."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within 0-100, got {pct}")
    ordered = sorted(samples)
    rank = pct / 100.0 * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def summarize(samples_s: Sequence[float]) -> LatencyStats:
    return LatencyStats(
        n=len(samples_s),
        p50_s=percentile(samples_s, 50),
        p95_s=percentile(samples_s, 95),
        min_s=min(samples_s),
        max_s=max(samples_s),
    )


def build_result(platform_s: Sequence[float], baseline_s: Sequence[float], memory_mib: int) -> BenchResult:
    platform, baseline = summarize(platform_s), summarize(baseline_s)
    return BenchResult(
        memory_mib=memory_mib,
        platform_samples_s=tuple(platform_s),
        baseline_samples_s=tuple(baseline_s),
        platform=platform,
        baseline=baseline,
        p50_ratio=platform.p50_s / baseline.p50_s,
        p95_ratio=platform.p95_s / baseline.p95_s,
    )


def format_table(result: BenchResult) -> list[str]:
    """The lines `run_provision_bench` prints: figures in seconds, 3 decimals."""
    lines = [f"{'':10} {'n':>3} {'p50_s':>8} {'p95_s':>8} {'min_s':>8} {'max_s':>8}"]
    for label, stats in (("platform", result.platform), ("baseline", result.baseline)):
        lines.append(f"{label:10} {stats.n:>3} {stats.p50_s:>8.3f} {stats.p95_s:>8.3f}"
                     f" {stats.min_s:>8.3f} {stats.max_s:>8.3f}")
    return lines + [
        f"platform/baseline: p50 {result.p50_ratio:.2f}x, p95 {result.p95_ratio:.2f}x",
        # Kept under 80 columns: rich wraps longer lines when not on a terminal.
        "platform: POST /v1/vms -> operation done: placement, qcow2 volume creation",
        "  (timed), define, start, boot marker on the console, inventory record",
        "baseline: qcow2 overlay, libvirt define, start -> boot marker on the console",
        f"  of {BASELINE_HOST_ID}, same guest",
        f"both polled every {POLL_INTERVAL_S * 1000:.0f} ms; percentiles: {PERCENTILE_METHOD}",
    ]


# --- the stack under test -----------------------------------------------------------------------


def _running_stack(run_dir: Path) -> stack.StackConfig:
    """The stack recorded in `run_dir`, once its API answers; BenchError otherwise."""
    cfg = stack.load_config(run_dir)
    if cfg is None:
        raise BenchError(f"no vmflow stack runs from {run_dir} (no {stack.STACK_FILE}); "
                         f"start one with `vmflow up --run-dir {run_dir}`")
    client = VmflowClient(cfg.api_url, timeout_s=5.0)
    try:
        client.call("GET", "/readyz")
    except (ApiError, httpx.HTTPError) as exc:
        raise BenchError(f"the stack of {run_dir} is not ready at {cfg.api_url} ({exc}); "
                         f"see `vmflow status --run-dir {run_dir}`") from exc
    finally:
        client.close()
    return cfg


def _baseline_host_uri(cfg: stack.StackConfig) -> str:
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    hosts = {h.host_id: h for h in the_lab.hosts} if the_lab else {}
    if BASELINE_HOST_ID not in hosts:
        raise BenchError(f"lab host {BASELINE_HOST_ID} is not recorded in {cfg.root / 'lab'}")
    return hosts[BASELINE_HOST_ID].unix_uri


def _bench_image(cfg: stack.StackConfig) -> Image:
    image = ImageCatalog(cfg.pool_dir / "images").get(BENCH_IMAGE)
    if image.boot_marker is None:
        raise BenchError(f"image {image.name} prints no boot marker: nothing to time the boot by")
    return image


# --- one platform run ---------------------------------------------------------------------------


def _provision_once(client: VmflowClient, name: str, memory_mib: int) -> float:
    """Seconds from the POST /v1/vms request to its operation being done (the guest booted).
    The VM is deleted afterwards, untimed. BenchError if either operation fails."""
    started_s = time.monotonic()
    accepted = client.create_vm(name, vcpus=1, memory_mib=memory_mib, disk_gib=1, image=BENCH_IMAGE)
    op = client.wait_operation(accepted["operation_id"], OPERATION_TIMEOUT_S, interval_s=POLL_INTERVAL_S)
    elapsed_s = time.monotonic() - started_s
    _check_succeeded(op, f"provisioning {name}")
    deleted = client.call("DELETE", f"/v1/vms/{accepted['vm']['id']}")
    _check_succeeded(client.wait_operation(deleted["operation_id"], OPERATION_TIMEOUT_S), f"deleting {name}")
    return elapsed_s


def _check_succeeded(op: dict, what: str) -> None:
    if op["state"] != "succeeded":
        error = op.get("error") or {}
        raise BenchError(f"{what} {op['state']} at step {op.get('step')}: "
                         f"{error.get('code', '?')}: {error.get('message', 'no message')}")


# --- one baseline run ---------------------------------------------------------------------------


def _boot_directly_once(hv: Hypervisor, image: Image, memory_mib: int, scratch_dir: Path, name: str) -> float:
    """Seconds from creating the root disk (an overlay on the image, as the platform's volume
    is) to the boot marker on the console of the domain defined and started on the baseline
    host. The domain is always destroyed and undefined, and its files removed."""
    files_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch_dir))
    vm_id = str(uuid.uuid4())
    try:
        disk = files_dir / "disk.qcow2"
        started_s = time.monotonic()
        _create_overlay(Path(image.disk_path), disk)
        xml = build_domain_xml(_baseline_spec(vm_id, name, image, memory_mib, disk), str(files_dir))
        console = Path(console_path(str(files_dir), vm_id))
        hv.define(xml)
        hv.start(vm_id)
        _wait_for_marker(console, image.boot_marker or "", BOOT_TIMEOUT_S)
        return time.monotonic() - started_s
    finally:
        try:
            hv.undefine(vm_id)  # destroys first; absent is fine
        finally:
            shutil.rmtree(files_dir, ignore_errors=True)


def _create_overlay(backing: Path, path: Path) -> None:
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(path), "1G"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"qemu-img create {path} failed: {result.stderr.strip()}")


def _baseline_spec(vm_id: str, name: str, image: Image, memory_mib: int, disk: Path) -> DomainSpec:
    return DomainSpec(
        vm_id=vm_id, vm_name=name, tenant="bench", vcpus=1, memory_mib=memory_mib,
        disk_path=str(disk), domain_type="qemu", boot=image.boot,
    )


def _wait_for_marker(console: Path, marker: str, timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while count_marker(console, marker) == 0:
        if time.monotonic() > deadline_s:
            raise BenchError(f"no boot marker {marker!r} in {console} within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)


# --- the whole run ------------------------------------------------------------------------------


def run_provision_bench(
    run_dir: Path, count: int, memory_mib: int, say: Callable[[str], None], token: str | None = None
) -> BenchResult:
    """Provision `count` VMs one at a time through the platform and boot the same guest as often
    directly through libvirt, interleaved; print the figures through `say` and return them.
    `token`: the API token the platform side uses (a member's at least). Leaves no VM or
    baseline domain behind when it returns. BenchError if no stack runs from `run_dir` or a run
    fails; ApiError if the API refuses a request."""
    cfg = _running_stack(run_dir)
    image = _bench_image(cfg)
    hv = Hypervisor(_baseline_host_uri(cfg))
    client = VmflowClient(cfg.api_url, token)
    tag = uuid.uuid4().hex[:6]
    say(f"provisioning {count} x {memory_mib} MiB '{image.name}' guests: platform vs baseline, interleaved")
    platform_s: list[float] = []
    baseline_s: list[float] = []
    try:
        for i in range(1, count + 1):
            baseline_s.append(_boot_directly_once(hv, image, memory_mib, cfg.root, f"bench-{tag}-base-{i}"))
            platform_s.append(_provision_once(client, f"bench-{tag}-{i}", memory_mib))
            say(f"  {i}/{count}: baseline {baseline_s[-1]:.3f} s, platform {platform_s[-1]:.3f} s")
    finally:
        client.close()
        hv.close()
    result = build_result(platform_s, baseline_s, memory_mib)
    for line in format_table(result):
        say(line)
    return result
