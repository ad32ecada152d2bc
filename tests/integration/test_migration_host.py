"""Live and cold migration on the real lab hosts, through the host-worker's activity
``host.migrate_domain`` (run in temporalio's ActivityEnvironment, against each lab host's
libvirtd), checked with virsh and on the guests' serial consoles.

Guests are defined directly through libvirt (as the provisioning benchmark does), so these tests
exercise the host side alone; the LiveMigrate workflow has tests of its own.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from deploy import lab, stack
from services.host_worker.activities import HostActivities
from services.host_worker.domain_xml import build_domain_xml, serial_log_path
from services.host_worker.hypervisor import Hypervisor
from services.host_worker.settings import HostWorkerSettings
from services.storage.catalog import ImageCatalog
from shared.errors import Conflict, NotFound, Timeout
from shared.migration import ConvergencePolicy, MigrateRequest, MigrateResult
from shared.models import DomainSpec
from tests.integration.libvirt_probe import wait_until

MARKER = "VMFLOW-GUEST-BOOTED"
COUNTER = re.compile(r"^vmflow-counter (\d+)$", re.M)
DIRTIED = re.compile(r"^vmflow-dirtied-mib (\d+)$", re.M)
GUEST_TROUBLE = re.compile(r"Oops|BUG:|Kernel panic")


@dataclass
class LabHostSide:
    """What runs on one lab host: its libvirt adapter and the host-worker's activities."""

    host: lab.LabHost
    hv: Hypervisor
    activities: HostActivities
    departed: list[str]  # VMs the host was told had left it


@pytest.fixture(scope="module")
def sides(stack_cfg):
    the_lab = lab.load_lab(stack_cfg.lab_name, stack_cfg.root / "lab")
    result = {}
    for host in the_lab.hosts:
        hv = Hypervisor(host.unix_uri)
        settings = HostWorkerSettings(host_id=host.host_id, libvirt_uri=host.unix_uri,
                                      console_dir=str(stack_cfg.root / "migration-test"))
        departed: list[str] = []

        async def record(vm_id: str, departed=departed) -> None:
            departed.append(vm_id)

        result[host.host_id] = LabHostSide(host, hv, HostActivities(settings, hv, "qemu", departed=record), departed)
    yield result
    for side in result.values():
        side.hv.close()


class ConsoleWatch:
    """Reads a guest's console every 50 ms and notes when each counter line first appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen_at: dict[int, float] = {}
        self.dirtied_at: list[tuple[float, int]] = []  # (time seen, MiB rewritten so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now, text = time.monotonic(), self.text()
            for n in map(int, COUNTER.findall(text)):
                self.seen_at.setdefault(n, now)
            totals = [int(t) for t in DIRTIED.findall(text)]
            if totals and (not self.dirtied_at or totals[-1] != self.dirtied_at[-1][1]):
                self.dirtied_at.append((now, totals[-1]))

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def counters(self) -> list[int]:
        return [int(n) for n in COUNTER.findall(self.text())]

    def last_counter(self) -> int:
        return max(self.counters(), default=0)

    def wait_counter(self, at_least: int, timeout_s: float = 30.0) -> None:
        wait_until(lambda: self.last_counter() >= at_least, timeout_s, 0.1, f"counter {at_least}")

    def largest_gap_s(self, since: float) -> float:
        """The longest wait between two consecutive counter lines seen after ``since``."""
        times = [t for _, t in sorted(self.seen_at.items()) if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def dirty_rate_mib_s(self) -> float:
        """How fast the guest says it rewrites memory, over what this watch saw."""
        if len(self.dirtied_at) < 2:
            return 0.0
        (t0, mib0), (t1, mib1) = self.dirtied_at[0], self.dirtied_at[-1]
        return (mib1 - mib0) / (t1 - t0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Guest:
    vm_id: str
    console: ConsoleWatch


@contextmanager
def running_guest(stack_cfg, sides, image_name: str, memory_mib: int, start: bool = True):
    """A guest of ``image_name`` defined (and started) on h1, on a qcow2 overlay in a directory
    every lab host sees; gone from every host afterwards."""
    image = ImageCatalog(stack_cfg.pool_dir / "images").get(image_name)
    files = stack_cfg.root / "migration-test"
    files.mkdir(exist_ok=True)
    vm_id = str(uuid.uuid4())
    disk = files / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.disk_path,
                    str(disk), "1G"], check=True)
    spec = DomainSpec(vm_id=vm_id, vm_name=f"mig-{vm_id[:6]}", tenant="migration-test", vcpus=1,
                      memory_mib=memory_mib, disk_path=str(disk), domain_type="qemu", boot=image.boot)
    watch = ConsoleWatch(Path(serial_log_path(str(files), vm_id)))
    try:
        sides["h1"].hv.define(build_domain_xml(spec, str(files)))
        if start:
            sides["h1"].hv.start(vm_id)
            watch.wait_counter(2, timeout_s=90)
        yield Guest(vm_id, watch)
    finally:
        watch.close()
        for side in sides.values():
            side.hv.undefine(vm_id)
        disk.unlink(missing_ok=True)
        watch.path.unlink(missing_ok=True)


async def migrate(sides, source: str, dest: str, vm_id: str, live: bool = True,
                  heartbeats: list | None = None, **policy) -> MigrateResult:
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details[0]) if heartbeats is not None else None
    request = MigrateRequest(vm_id, dest, sides[dest].host.tcp_uri, live=live,
                             policy=ConvergencePolicy(**policy))
    return await env.run(sides[source].activities.migrate_domain, request)


def report(what: str, result: MigrateResult | None, seconds: float, extra: str = "") -> None:
    figures = "" if result is None else (
        f", libvirt {result.elapsed_ms} ms, downtime {result.downtime_ms} ms, "
        f"{result.data_transferred_mib} MiB sent, limit {result.final_downtime_limit_ms} ms, "
        f"post-copy {result.post_copy}")
    print(f"\n[migration] {what}: {seconds:.2f} s{figures}{extra}")


def warn_if_guest_hurt(guest: Guest, boots_before: int, what: str) -> None:
    """A pre-copy move of a guest that rewrites memory this fast has corrupted the guest kernel
    under TCG on these machines (QEMU's dirty tracking misses writes); KVM hosts track dirty
    pages in hardware. Noted, not failed: it is not the platform's doing."""
    text = guest.console.text()
    if GUEST_TROUBLE.search(text) or text.count(MARKER) != boots_before:
        warnings.warn(f"the guest's kernel was hurt after {what} (TCG dirty tracking)", stacklevel=2)


async def test_live_migration_keeps_the_guest_running_from_host_to_host(stack_cfg, sides, probe):
    with running_guest(stack_cfg, sides, stack.GUEST_IMAGE, 128) as guest:
        vm_id = guest.vm_id
        for source, dest in (("h1", "h2"), ("h2", "h3")):
            heartbeats: list[dict] = []
            started_at, started = time.monotonic(), guest.console.last_counter()
            result = await migrate(sides, source, dest, vm_id, heartbeats=heartbeats)
            seconds = time.monotonic() - started_at
            # It runs on exactly one host, the destination, which saw the same downtime.
            assert probe.where(vm_id) == [dest]
            assert probe.state(dest, vm_id) == "running"
            assert (result.vm_id, result.dest_host_id, result.post_copy) == (vm_id, dest, False)
            # The source dropped what it carried for the VM as it left: the workflow need not ask.
            assert result.source_released and sides[source].departed[-1] == vm_id
            assert result.downtime_ms is not None and 0 < result.downtime_ms < 1000
            assert sides[dest].hv.completed_job_stats(vm_id).downtime_ms == result.downtime_ms
            assert heartbeats and {"elapsed_ms", "data_remaining_mib", "percent"} <= set(heartbeats[-1])
            guest.console.wait_counter(started + 3)
            report(f"{source} -> {dest}, idle 128 MiB guest", result, seconds,
                   f", largest counter gap {guest.console.largest_gap_s(started_at - 1):.2f} s")

        # The guest never rebooted and its counter never restarted or skipped.
        counters = guest.console.counters()
        assert counters == list(range(1, len(counters) + 1))
        assert guest.console.text().count(MARKER) == 1

        with pytest.raises(NotFound, match=f"VM {vm_id} is not on host h1: nothing to migrate"):
            await migrate(sides, "h1", "h2", vm_id)
        with pytest.raises(Conflict, match="a cold migration needs it shutoff"):
            await migrate(sides, "h3", "h1", vm_id, live=False)


async def test_cold_migration_moves_a_stopped_vm_which_then_boots_there(stack_cfg, sides, probe):
    with running_guest(stack_cfg, sides, stack.GUEST_IMAGE, 128, start=False) as guest:
        vm_id = guest.vm_id
        with pytest.raises(Conflict, match=f"VM {vm_id} is shutoff on h1: a live migration needs it running"):
            await migrate(sides, "h1", "h2", vm_id)
        started_at = time.monotonic()
        result = await migrate(sides, "h1", "h2", vm_id, live=False)
        report("cold h1 -> h2", result, time.monotonic() - started_at)
        assert probe.where(vm_id) == ["h2"] and probe.state("h2", vm_id) == "shut off"
        assert result.downtime_ms is None
        sides["h2"].hv.start(vm_id)
        guest.console.wait_counter(2, timeout_s=90)
        assert probe.where(vm_id) == ["h2"]


async def test_a_guest_dirtying_memory_faster_than_the_link_is_aborted_then_moved(stack_cfg, sides, probe):
    with running_guest(stack_cfg, sides, stack.DIRTY_GUEST_IMAGE, 192) as guest:
        vm_id, console = guest.vm_id, guest.console
        wait_until(lambda: len(console.dirtied_at) >= 3, 60, 0.1, "the guest dirtying memory")
        guest_rate = console.dirty_rate_mib_s()
        print(f"\n[migration] the dirty guest rewrites its 48 MiB buffer at {guest_rate:.0f} MiB/s")
        assert guest_rate > 100

        # 48 MiB rewritten continuously cannot cross a 32 MiB/s link within 20 ms of downtime.
        strict = dict(downtime_steps_ms=(10, 20), auto_converge=False, completion_timeout_s=4,
                      bandwidth_mib_s=32)
        heartbeats: list[dict] = []
        started_at, counter = time.monotonic(), console.last_counter()
        with pytest.raises(Timeout, match=rf"migration of VM {vm_id} to h2 did not complete within 4 s \(pass \d+, \d+ MiB left, downtime limit \d+ ms\); "
                                          r"the VM still runs on h1"):
            await migrate(sides, "h1", "h2", vm_id, heartbeats=heartbeats, **strict)
        seconds = time.monotonic() - started_at
        report("dirty guest h1 -> h2, strict policy: aborted", None, seconds,
               f", {max(h['iteration'] for h in heartbeats)} passes, libvirt's dirty rate up to "
               f"{max(h['dirty_rate_mib_s'] for h in heartbeats):.0f} MiB/s")
        assert seconds < 4 + 3
        assert probe.where(vm_id) == ["h1"] and probe.state("h1", vm_id) == "running"
        assert sides["h1"].hv.job_stats(vm_id) is None
        console.wait_counter(counter + 3)

        # Cancelling (the Temporal activity cancelled) aborts libvirt's job; the VM stays.
        env, heartbeats = ActivityEnvironment(), []
        env.on_heartbeat = lambda *details: heartbeats.append(details[0])
        request = MigrateRequest(vm_id, "h2", sides["h2"].host.tcp_uri,
                                 policy=ConvergencePolicy(bandwidth_mib_s=32))
        running = asyncio.ensure_future(env.run(sides["h1"].activities.migrate_domain, request))
        await asyncio.to_thread(wait_until, lambda: any(h["data_processed_mib"] for h in heartbeats), 30, 0.05,
                                "the migration moving data")
        started_at = time.monotonic()
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        report("dirty guest h1 -> h2, cancelled", None, time.monotonic() - started_at)
        assert probe.where(vm_id) == ["h1"] and probe.state("h1", vm_id) == "running"
        assert sides["h1"].hv.job_stats(vm_id) is None

        # Past its last downtime step the policy switches to post-copy, which always completes.
        boots, started_at = console.text().count(MARKER), time.monotonic()
        result = await migrate(sides, "h1", "h2", vm_id, downtime_steps_ms=(10, 20), stall_iterations=1,
                               auto_converge=False, post_copy=True, completion_timeout_s=90, bandwidth_mib_s=32)
        report("dirty guest h1 -> h2, post-copy after the last step", result, time.monotonic() - started_at)
        assert result.post_copy and result.final_downtime_limit_ms == 20
        assert probe.where(vm_id) == ["h2"] and probe.state("h2", vm_id) == "running"
        console.wait_counter(console.last_counter() + 2)
        warn_if_guest_hurt(guest, boots, "post-copy")

        # The default policy (auto-converge, downtime up to 1.6 s, no bandwidth cap) converges.
        boots, started_at = console.text().count(MARKER), time.monotonic()
        result = await migrate(sides, "h2", "h3", vm_id, completion_timeout_s=90)
        report("dirty guest h2 -> h3, default policy", result, time.monotonic() - started_at)
        assert not result.post_copy and result.downtime_ms is not None
        assert probe.where(vm_id) == ["h3"] and probe.state("h3", vm_id) == "running"
        console.wait_counter(console.last_counter() + 2)
        warn_if_guest_hurt(guest, boots, "a pre-copy move")


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_files(stack_cfg):
    yield
    shutil.rmtree(stack_cfg.root / "migration-test", ignore_errors=True)
