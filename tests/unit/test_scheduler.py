"""The scheduler's state machine with a fake clock: claims stop double-booking."""

from __future__ import annotations

import pytest

from services.scheduler.service import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.errors import NoValidHost
from shared.models import ClaimRelease, HostHeartbeat, PlacementRequest


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def scheduler() -> Scheduler:
    clock = Clock()
    s = Scheduler(SchedulerSettings(ram_allocation_ratio=1.0), clock)
    s.observe(HostHeartbeat("h1", clock.now_s, True, "qemu", 2, 1024, disk_gib=100))
    s.observe(HostHeartbeat("h2", clock.now_s, True, "qemu", 2, 1024, disk_gib=100))
    return s


def test_claims_prevent_double_booking(scheduler: Scheduler):
    placed = [scheduler.place(PlacementRequest(f"vm{i}", 1, 512, 1)).host_id for i in range(4)]
    assert sorted(placed) == ["h1", "h1", "h2", "h2"]
    with pytest.raises(NoValidHost, match="ram removed h1 .*, h2"):
        scheduler.place(PlacementRequest("vm5", 1, 512, 1))


def test_place_is_idempotent_per_vm(scheduler: Scheduler):
    first = scheduler.place(PlacementRequest("vm1", 1, 512, 1))
    again = scheduler.place(PlacementRequest("vm1", 1, 512, 1))
    assert first == again
    assert sum(v.memory_mib_used for v in scheduler.host_views().hosts) == 512


def test_release_gives_capacity_back(scheduler: Scheduler):
    for i in range(4):
        scheduler.place(PlacementRequest(f"vm{i}", 1, 512, 1))
    scheduler.release(ClaimRelease("vm0"))
    assert scheduler.place(PlacementRequest("vm9", 1, 512, 1)).host_id in ("h1", "h2")


def test_host_views_report_down_hosts(scheduler: Scheduler):
    scheduler.observe(HostHeartbeat("h3", 0.0, True, "qemu", 2, 1024, disk_gib=100))
    states = {v.host_id: v.state for v in scheduler.host_views().hosts}
    assert states == {"h1": "up", "h2": "up", "h3": "down"}


def test_a_claim_on_an_excluded_host_is_not_reused(scheduler: Scheduler):
    first = scheduler.place(PlacementRequest("vm1", 1, 512, 1))
    moved = scheduler.place(PlacementRequest("vm1", 1, 512, 1, exclude_hosts=(first.host_id,)))
    assert moved.host_id != first.host_id
    assert sum(v.memory_mib_used for v in scheduler.host_views().hosts) == 512  # one claim, not two
