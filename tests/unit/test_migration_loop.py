"""The host's migration loop against a scripted fake hypervisor: it escalates, switches to
post-copy, aborts on time and on cancellation, follows an earlier attempt's job, and always says
where the VM is. Also the adapter's pure translation of libvirt's job stats and flags."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import libvirt
import pytest
from prometheus_client import REGISTRY

from services.host_worker.domain_xml import disk_sources, with_disk_sources
from services.host_worker.hypervisor import (
    completed_from_job_stats,
    disk_move_params,
    migration_flags,
    progress_from_job_stats,
)
from services.host_worker.migration import CompletedMigration, LiveMigration
from shared.errors import HostUnavailable, HypervisorError, InvalidRequest, Timeout
from shared.migration import ConvergencePolicy, MigrateRequest, MigrationProgress

VM = "5a3c0d2e-0000-4000-8000-000000000001"
FAST = dict(poll_interval_s=0.01, stall_iterations=2, completion_timeout_s=5.0)


class FakeHypervisor:
    """A migration whose job stats come from ``script(poll_count, fake)``; it completes when
    ``complete_when(fake)`` holds, fails with ``fail_with``, or ends when aborted."""

    def __init__(self, script: Callable[[int, FakeHypervisor], MigrationProgress | None],
                 complete_when: Callable[[FakeHypervisor], bool] = lambda fake: False,
                 fail_with: Exception | None = None, earlier_job_polls: int = 0,
                 earlier_job_completes: bool = False) -> None:
        self.script, self.complete_when, self.fail_with = script, complete_when, fail_with
        self.polls = 0
        self.downtimes: list[int] = []
        self.initial_downtime_ms: int | None = None
        self.flags: dict = {}
        self.post_copy_started = False
        self.aborts = 0
        self.migrate_calls = 0
        self.domain_state = "running"
        self.earlier_job_polls = earlier_job_polls  # an earlier attempt's job runs this many polls
        self.earlier_job_completes = earlier_job_completes
        self._ended = threading.Event()
        self._running = False

    # -- what the loop calls ---------------------------------------------------------------------

    def migrate_live(self, vm_id, dest_uri, *, disk_moves, auto_converge, post_copy, bandwidth_mib_s,
                     initial_downtime_ms):
        self.migrate_calls += 1
        self.flags = dict(disk_moves=disk_moves, auto_converge=auto_converge, post_copy=post_copy,
                          bandwidth_mib_s=bandwidth_mib_s)
        self.initial_downtime_ms = initial_downtime_ms
        if self.fail_with is not None:
            raise self.fail_with
        self._running = True
        while not self._ended.wait(0.005):
            if self.complete_when(self):
                self._running = False
                self.domain_state = "absent"
                return CompletedMigration(elapsed_ms=1234, downtime_ms=42, data_processed_mib=150, iterations=3)
        self._running = False
        raise HypervisorError(f"migrating vm-{vm_id} to {dest_uri}: operation aborted: canceled by client")

    def job_stats(self, vm_id):
        if self.earlier_job_polls > 0:
            self.earlier_job_polls -= 1
            if self.earlier_job_polls == 0 and self.earlier_job_completes:
                self.domain_state = "absent"
            return MigrationProgress(elapsed_ms=500, iteration=1, data_remaining_mib=10)
        if not self._running:
            return None
        self.polls += 1
        return self.script(self.polls, self)

    def set_max_downtime(self, vm_id, downtime_ms):
        self.downtimes.append(downtime_ms)

    def start_post_copy(self, vm_id):
        self.post_copy_started = True

    def abort_job(self, vm_id):
        self.aborts += 1
        self.earlier_job_polls = 0
        self._ended.set()

    def state(self, vm_id):
        return self.domain_state


def request(**policy) -> MigrateRequest:
    return MigrateRequest(VM, "h2", "qemu+tcp://127.1.0.12/system",
                          policy=ConvergencePolicy(**{**FAST, **policy}))


def stuck_at(remaining_mib: int):
    """A migration whose every pass leaves the same amount of memory to copy."""
    return lambda polls, _fake: MigrationProgress(elapsed_ms=polls * 10, iteration=polls,
                                                  data_total_mib=256, data_processed_mib=polls * 40,
                                                  data_remaining_mib=remaining_mib, dirty_rate_mib_s=700.0)


async def test_a_converging_migration_completes_without_escalation_and_reports_progress():
    def shrinking(polls, _fake):
        return MigrationProgress(elapsed_ms=polls * 10, iteration=polls, data_total_mib=128,
                                 data_processed_mib=polls * 30, data_remaining_mib=max(0, 128 - polls * 30))
    fake = FakeHypervisor(shrinking, complete_when=lambda f: f.polls >= 4)
    reports: list[MigrationProgress] = []
    result = await LiveMigration(fake, request(), "h1", reports.append).run()
    assert (result.vm_id, result.dest_host_id, result.downtime_ms, result.elapsed_ms) == (VM, "h2", 42, 1234)
    assert result.data_transferred_mib == 150 and result.final_downtime_limit_ms == 100
    assert fake.initial_downtime_ms == 100 and fake.downtimes == [] and fake.aborts == 0
    assert fake.flags == dict(disk_moves={}, auto_converge=True, post_copy=False, bandwidth_mib_s=0)
    assert reports and reports[-1].data_remaining_mib < reports[0].data_remaining_mib
    assert all(r.downtime_limit_ms == 100 for r in reports)


async def test_a_stalled_migration_raises_the_downtime_step_by_step_until_it_converges():
    fake = FakeHypervisor(stuck_at(60), complete_when=lambda f: 400 in f.downtimes)
    result = await LiveMigration(fake, request(downtime_steps_ms=(100, 200, 400, 800)), "h1").run()
    assert fake.downtimes == [200, 400]
    assert result.final_downtime_limit_ms == 400 and fake.aborts == 0


async def test_past_the_last_step_it_switches_to_post_copy_when_allowed():
    fake = FakeHypervisor(stuck_at(60), complete_when=lambda f: f.post_copy_started)
    result = await LiveMigration(fake, request(downtime_steps_ms=(100, 200), post_copy=True), "h1").run()
    assert fake.flags["post_copy"] and fake.downtimes == [200] and fake.post_copy_started
    assert result.post_copy and result.final_downtime_limit_ms == 200


async def test_a_migration_that_never_converges_is_aborted_and_the_vm_stays():
    fake = FakeHypervisor(stuck_at(60))
    migration = LiveMigration(fake, request(downtime_steps_ms=(10, 20), completion_timeout_s=0.3), "h1")
    with pytest.raises(Timeout, match=rf"migration of VM {VM} to h2 did not complete within 0.3 s \(pass \d+, \d+ MiB left, downtime limit \d+ ms\); "
                                      r"the VM still runs on h1"):
        await migration.run()
    assert fake.aborts == 1 and fake.downtimes == [20] and not fake.post_copy_started
    assert fake.domain_state == "running"


async def test_the_timeout_holds_even_when_libvirt_shows_no_job_yet():
    fake = FakeHypervisor(lambda polls, _fake: None)  # e.g. stuck connecting to the destination
    with pytest.raises(Timeout, match="did not complete within 0.1 s"):
        await LiveMigration(fake, request(completion_timeout_s=0.1), "h1").run()
    assert fake.aborts == 1


async def test_cancelling_aborts_the_libvirt_job_before_the_cancellation_propagates():
    fake = FakeHypervisor(stuck_at(60))
    task = asyncio.create_task(LiveMigration(fake, request(), "h1").run())
    while fake.polls < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.aborts == 1 and not fake._running and fake.domain_state == "running"


async def test_a_failed_migration_says_where_the_vm_is():
    fake = FakeHypervisor(stuck_at(60), fail_with=HostUnavailable(
        "migrating vm-x to qemu+tcp://127.1.0.12/system: unable to connect to server"))
    with pytest.raises(HostUnavailable, match="unable to connect to server; the VM still runs on h1"):
        await LiveMigration(fake, request(), "h1").run()


async def test_an_earlier_attempts_migration_is_followed_not_started_twice():
    fake = FakeHypervisor(stuck_at(60), earlier_job_polls=3, earlier_job_completes=True)
    result = await LiveMigration(fake, request(), "h1").run()
    assert fake.migrate_calls == 0 and result.downtime_ms is None and result.dest_host_id == "h2"


async def test_when_the_earlier_attempts_migration_failed_a_new_one_starts():
    fake = FakeHypervisor(stuck_at(0), complete_when=lambda f: f.polls >= 2, earlier_job_polls=3)
    result = await LiveMigration(fake, request(), "h1").run()
    assert fake.migrate_calls == 1 and result.downtime_ms == 42


# -- libvirt's figures, translated (pure functions of the adapter) ------------------------------

def test_job_stats_become_progress_in_mib_and_mib_per_second():
    mib = 1024 * 1024
    # As libvirt 9.0 reported a running migration of a 192 MiB guest capped at 32 MiB/s.
    running = {"type": 2, "operation": 5, "time_elapsed": 4120, "data_total": 192 * mib,
               "data_processed": 212 * mib, "data_remaining": 49 * mib, "memory_iteration": 2,
               "memory_dirty_rate": 3600, "memory_page_size": 4096}
    progress = progress_from_job_stats(running)
    assert (progress.elapsed_ms, progress.iteration, progress.data_total_mib, progress.data_processed_mib,
            progress.data_remaining_mib) == (4120, 2, 192, 212, 49)
    assert progress.dirty_rate_mib_s == 3600 * 4096 / mib
    completed = completed_from_job_stats({"time_elapsed": 675, "downtime": 80, "data_processed": 91512870,
                                          "memory_iteration": 3, "memory_postcopy_requests": 0})
    assert (completed.elapsed_ms, completed.downtime_ms, completed.data_processed_mib) == (675, 80, 87)
    assert completed_from_job_stats({}).downtime_ms is None


def test_migration_flags_follow_storage_and_policy():
    base = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
    base |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    live = base | libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE
    assert migration_flags(live=True) == live
    assert migration_flags(live=True, copy_disks=True, auto_converge=True, post_copy=True) == (
        live | libvirt.VIR_MIGRATE_NON_SHARED_INC | libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_POSTCOPY)
    assert migration_flags(live=False) == base | libvirt.VIR_MIGRATE_OFFLINE
    with pytest.raises(InvalidRequest, match="an offline migration copies no disks"):
        migration_flags(live=False, copy_disks=True)


def test_moved_disks_point_at_their_copies_and_only_they_are_copied():
    xml = """<domain type='qemu'><name>vm</name><devices>
      <disk type='file' device='disk'><source file='/h1/pool/volumes/vm-a-root.qcow2'/><target dev='vda'/></disk>
      <disk type='file' device='disk'><source file='/shared/volumes/data.qcow2'/><target dev='vdb'/></disk>
    </devices></domain>"""
    moves = {"/h1/pool/volumes/vm-a-root.qcow2": "/h2/pool/volumes/vm-a-root.qcow2"}
    params = disk_move_params(xml, xml, moves)
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    for kept in (libvirt.VIR_MIGRATE_PARAM_DEST_XML, libvirt.VIR_MIGRATE_PARAM_PERSIST_XML):
        assert disk_sources(params[kept]) == {
            "vda": "/h2/pool/volumes/vm-a-root.qcow2", "vdb": "/shared/volumes/data.qcow2"}
    with pytest.raises(InvalidRequest, match="no disk at /elsewhere"):
        with_disk_sources(xml, {"/elsewhere": "/x"})


async def test_a_completed_migration_is_observed_with_libvirts_downtime_and_an_aborted_one_is_not():
    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    durations, downtimes = count("vmflow_migration_duration_seconds_count", mode="live"), count(
        "vmflow_migration_downtime_seconds_count")
    downtime_sum = count("vmflow_migration_downtime_seconds_sum")
    await LiveMigration(FakeHypervisor(stuck_at(10), complete_when=lambda f: f.polls >= 2), request(), "h1").run()
    assert count("vmflow_migration_duration_seconds_count", mode="live") == durations + 1
    assert count("vmflow_migration_downtime_seconds_count") == downtimes + 1
    assert count("vmflow_migration_downtime_seconds_sum") == pytest.approx(downtime_sum + 0.042)  # libvirt's 42 ms
    with pytest.raises(Timeout):
        await LiveMigration(FakeHypervisor(stuck_at(60)), request(completion_timeout_s=0.1), "h1").run()
    assert count("vmflow_migration_duration_seconds_count", mode="live") == durations + 1
