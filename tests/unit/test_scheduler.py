"""The scheduler's state machine with a fake clock, and its claims shared by replicas through a
store with compare-and-set (here in memory, with the same semantics as the NATS KV bucket; the
real bucket under three real replicas is tested in tests/integration/test_fleet.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.scheduler.claim_store import Placer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Scheduler
from shared.errors import NoValidHost
from shared.models import DomainSummary, HostHeartbeat, PlacementRequest
from tests.unit.claim_memory import MemoryClaimStore


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def beat(host_id: str, clock: Clock, domains=()) -> HostHeartbeat:
    return HostHeartbeat(host_id, clock.now_s, True, "qemu", 2, 1024, tuple(domains), disk_gib=100)


def replica(clock: Clock, store: MemoryClaimStore) -> tuple[Scheduler, Placer]:
    """A scheduler replica that knows h1 and h2 (1 GiB each) and mirrors nothing yet."""
    s = Scheduler(SchedulerSettings(ram_allocation_ratio=1.0), clock)
    s.observe(beat("h1", clock))
    s.observe(beat("h2", clock))
    return s, Placer(s, store)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryClaimStore:
    return MemoryClaimStore()


@pytest.fixture
def one(clock, store) -> tuple[Scheduler, Placer]:
    return replica(clock, store)


async def test_claims_prevent_double_booking(one):
    scheduler, placer = one
    placed = [(await placer.place(PlacementRequest(f"vm{i}", 1, 512, 1))).host_id for i in range(4)]
    assert sorted(placed) == ["h1", "h1", "h2", "h2"]
    with pytest.raises(NoValidHost, match="ram removed h1 .*, h2"):
        await placer.place(PlacementRequest("vm5", 1, 512, 1))


async def test_place_is_idempotent_per_vm(one, store):
    scheduler, placer = one
    first = await placer.place(PlacementRequest("vm1", 1, 512, 1))
    again = await placer.place(PlacementRequest("vm1", 1, 512, 1))
    assert first == again
    assert store.writes == 1
    assert sum(v.memory_mib_used for v in scheduler.host_views().hosts) == 512


async def test_release_gives_capacity_back_exactly_once(one):
    scheduler, placer = one
    for i in range(4):
        await placer.place(PlacementRequest(f"vm{i}", 1, 512, 1))
    assert await placer.release("vm0") is True
    assert await placer.release("vm0") is False
    assert (await placer.place(PlacementRequest("vm9", 1, 512, 1))).host_id in ("h1", "h2")


def test_host_views_report_down_hosts(one, clock):
    scheduler, _ = one
    scheduler.observe(HostHeartbeat("h3", 0.0, True, "qemu", 2, 1024, disk_gib=100))
    states = {v.host_id: v.state for v in scheduler.host_views().hosts}
    assert states == {"h1": "up", "h2": "up", "h3": "down"}


async def test_a_claim_on_an_excluded_host_is_not_reused(one, store):
    scheduler, placer = one
    first = await placer.place(PlacementRequest("vm1", 1, 512, 1))
    moved = await placer.place(PlacementRequest("vm1", 1, 512, 1, exclude_hosts=(first.host_id,)))
    assert moved.host_id != first.host_id
    assert sum(v.memory_mib_used for v in scheduler.host_views().hosts) == 512  # one claim, not two
    assert [c.vm_id for e in store.entries.values() for c in e.claims] == ["vm1"]


async def test_replicas_that_do_not_see_each_other_yet_never_overbook(clock, store):
    """Three replicas whose mirrors learn only from their own writes and lost races: 12 requests
    at once for 8 slots. Every slot is given once; the rest are refused with the reason."""
    replicas = [replica(clock, store) for _ in range(3)]
    requests = [PlacementRequest(f"vm{i}", 1, 256, 1) for i in range(12)]
    outcomes = await asyncio.gather(*(replicas[i % 3][1].place(r) for i, r in enumerate(requests)),
                                    return_exceptions=True)
    placed = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(placed) == 8 and all(isinstance(e, NoValidHost) and "ram removed" in e.message for e in refused)
    for host_id in ("h1", "h2"):
        claims = store.entries[host_id].claims
        assert sum(c.memory_mib for c in claims) <= 1024
        assert sorted(c.vm_id for c in claims) == sorted(p.vm_id for p in placed if p.host_id == host_id)


async def test_a_release_is_exactly_once_whichever_replica_gets_it(clock, store):
    (a, place_a), (_, place_b) = replica(clock, store), replica(clock, store)
    await place_a.place(PlacementRequest("vm1", 1, 512, 1))
    # b never saw the claim: told the host, it reads the entry; the second release finds nothing.
    host_id = next(iter(a.claim_hosts("vm1")))
    first, second = await asyncio.gather(place_b.release("vm1", host_id), place_a.release("vm1"))
    assert sorted([first, second]) == [False, True]
    assert store.entries[host_id].claims == ()


async def test_a_restarted_replica_rebuilds_every_claim_from_the_store(clock, store):
    _, placer = replica(clock, store)
    for i in range(4):
        await placer.place(PlacementRequest(f"vm{i}", 1, 512, 1))
    fresh, fresh_placer = replica(clock, store)
    for entry in store.entries.values():  # what the bucket's watch delivers at start
        fresh.apply_claims(entry)
    with pytest.raises(NoValidHost):
        await fresh_placer.place(PlacementRequest("vm9", 1, 512, 1))


async def test_claims_of_vms_the_host_reports_and_expired_ones_leave_the_store(one, clock, store):
    scheduler, placer = one
    await placer.place(PlacementRequest("vm1", 1, 256, 1))
    host_id = next(iter(scheduler.claim_hosts("vm1")))
    await placer.place(PlacementRequest("vm2", 1, 256, 1, only_host=host_id))
    clock.now_s += 1
    running = [DomainSummary("vm1", "running", 1, 256)]
    assert scheduler.observe(beat(host_id, clock, running)) is False  # reported just now: kept
    clock.now_s += scheduler.settings.claim_settle_after_s
    assert scheduler.observe(beat(host_id, clock, running)) is True
    await placer.settle(host_id)
    assert [c.vm_id for c in store.entries[host_id].claims] == ["vm2"]
    clock.now_s += scheduler.settings.claim_ttl_s + 1
    scheduler.observe(beat(host_id, clock))
    await placer.settle(host_id)
    assert store.entries[host_id].claims == ()


async def test_a_replica_on_an_older_beat_never_overbooks_after_another_settles(clock, store):
    """Replica a sees h1 report vm1 and settles; replica b has not had that beat yet. b must
    still count vm1 (by its claim) when it places next: the claim stays until a has seen the VM
    reported for ``claim_settle_after_s``, long after every replica has the beat."""
    (a, place_a), (b, place_b) = replica(clock, store), replica(clock, store)
    await place_a.place(PlacementRequest("vm1", 1, 768, 1, only_host="h1"))
    clock.now_s += 0.5
    reported = beat("h1", clock, [DomainSummary("vm1", "running", 1, 768)])
    assert a.observe(reported) is False
    await place_a.settle("h1")
    assert [c.vm_id for c in store.entries["h1"].claims] == ["vm1"]
    with pytest.raises(NoValidHost, match="ram removed h1"):  # b: vm1 by its claim, not yet its domain
        await place_b.place(PlacementRequest("vm2", 1, 512, 1, only_host="h1"))
    b.observe(reported)
    clock.now_s += a.settings.claim_settle_after_s
    assert a.observe(beat("h1", clock, reported.domains)) is True
    await place_a.settle("h1")
    assert store.entries["h1"].claims == ()
    with pytest.raises(NoValidHost, match="ram removed h1"):  # b: now by its domain
        await place_b.place(PlacementRequest("vm2", 1, 512, 1, only_host="h1"))


async def test_the_claim_of_a_vm_that_arrived_and_left_again_still_goes(one, clock, store):
    """A VM moved to h1 and straight back: h1 reported it only briefly, and its claim there must
    not count it on h1 until the claim expires."""
    scheduler, placer = one
    await placer.place(PlacementRequest("vm1", 1, 768, 1, only_host="h1"))
    clock.now_s += 0.5
    scheduler.observe(beat("h1", clock, [DomainSummary("vm1", "running", 1, 768)]))
    clock.now_s += 0.5
    assert scheduler.observe(beat("h1", clock)) is False  # gone again, within the grace
    clock.now_s += scheduler.settings.claim_settle_after_s
    assert scheduler.observe(beat("h1", clock)) is True
    await placer.settle("h1")
    assert store.entries["h1"].claims == ()
    assert (await placer.place(PlacementRequest("vm2", 1, 768, 1, only_host="h1"))).host_id == "h1"


def test_a_heartbeat_older_than_the_latest_is_ignored(one, clock):
    """Beats come by two paths (a plain message and the bucket): the newest one counts."""
    scheduler, _ = one
    scheduler.observe(HostHeartbeat("h1", clock.now_s - 30, True, "qemu", 2, 1024, disk_gib=100))
    assert scheduler.heartbeats["h1"].sent_at_s == clock.now_s


def test_beats_of_one_worker_run_are_ordered_by_number_whatever_the_hosts_clock_did(one, clock):
    scheduler, _ = one

    def numbered(seq: int, sent_at_s: float, started_at_s: float = 100.0) -> HostHeartbeat:
        return HostHeartbeat("h9", sent_at_s, True, "qemu", 2, 1024, disk_gib=100,
                             worker_started_at_s=started_at_s, seq=seq)

    scheduler.observe(numbered(5, clock.now_s))
    scheduler.observe(numbered(6, clock.now_s - 3600))  # the host's clock stepped back an hour
    assert scheduler.heartbeats["h9"].seq == 6
    scheduler.observe(numbered(5, clock.now_s))  # the same beat by the other path, late
    assert scheduler.heartbeats["h9"].seq == 6
    scheduler.observe(numbered(1, clock.now_s + 1, started_at_s=clock.now_s))  # the worker restarted
    assert (scheduler.heartbeats["h9"].seq, scheduler.heartbeats["h9"].worker_started_at_s) == (1, clock.now_s)
    scheduler.observe(numbered(7, clock.now_s))  # the old run's last beat, late
    assert scheduler.heartbeats["h9"].seq == 1
