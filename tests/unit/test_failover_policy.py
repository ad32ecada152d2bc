"""Failover order, crash restarts and inventory drift: pure policy on plain values."""

from __future__ import annotations

from services.api.drift import Drift, Observed, Recorded, drift, observed_from_lifecycle
from shared.failover import CrashAction, CrashPolicy, failover_order, restarts_again
from shared.models import VmState, VmSummary
from shared.storage_models import PoolKind


def vm(name: str, state: VmState = VmState.RUNNING, ha: bool = True, priority: int = 0,
       storage: PoolKind = PoolKind.SHARED) -> VmSummary:
    return VmSummary(f"id-{name}", "t", name, state, "h1", 1, 128, 1, storage=storage, ha=ha,
                     restart_priority=priority)


def test_failover_restarts_ha_vms_by_priority_and_leaves_the_rest():
    vms = [vm("b", priority=1), vm("a", priority=1), vm("z", priority=9), vm("plain", ha=False),
           vm("local", storage=PoolKind.LOCAL), vm("moving", VmState.MIGRATING), vm("off", VmState.STOPPED)]
    restart, leave, busy = failover_order(vms)
    assert [v.name for v in restart] == ["z", "a", "b", "off"]
    assert {v.name for v in leave} == {"plain", "local"}
    assert [v.name for v in busy] == ["moving"]


def test_crash_restarts_stop_after_the_limit_in_the_window():
    policy = CrashPolicy(CrashAction.RESTART, max_restarts=3, window_s=600)
    history: tuple[float, ...] = ()
    answers = []
    for t in (0, 10, 20, 30):
        again, history = restarts_again(policy, history, t)
        answers.append(again)
    assert answers == [True, True, True, False]
    assert restarts_again(policy, history, 10_000) == (True, (10_000,))  # the window moved on
    assert restarts_again(CrashPolicy(CrashAction.NONE), (), 5)[0] is False


def rec(state: VmState, host: str | None = "h1", updated: float = 100.0) -> Recorded:
    return Recorded("v", state, host, updated)


def seen(state: str, host: str = "h1", reason: str = "", at: float = 200.0, managed: bool = True) -> Observed:
    return Observed("v", host, state, reason, at, managed)


def test_what_libvirt_says_changes_a_settled_vm():
    assert drift(rec(VmState.RUNNING), seen("shutoff", reason="failed")) is Drift.CRASHED
    assert drift(rec(VmState.RUNNING), seen("crashed")) is Drift.CRASHED
    assert drift(rec(VmState.RUNNING), seen("shutoff", reason="shutdown")) is Drift.STOPPED
    assert drift(rec(VmState.RUNNING), seen("shutoff", reason="destroyed")) is Drift.STOPPED
    assert drift(rec(VmState.STOPPED), seen("running")) is Drift.RUNNING
    assert drift(rec(VmState.RUNNING), seen("absent")) is Drift.LOST
    assert drift(rec(VmState.RUNNING), seen("running")) is Drift.NONE


def test_an_operation_owns_its_vm_and_old_facts_change_nothing():
    for held in (VmState.PROVISIONING, VmState.MIGRATING, VmState.STOPPING, VmState.RECOVERING, VmState.DELETING):
        assert drift(rec(held), seen("shutoff", reason="failed")) is Drift.NONE
    assert drift(rec(VmState.RUNNING, updated=300), seen("shutoff", reason="failed", at=200)) is Drift.NONE


def test_copies_on_other_hosts_and_domains_without_a_row():
    assert drift(rec(VmState.RUNNING, host="h2"), seen("shutoff", host="h1")) is Drift.STALE_COPY
    assert drift(rec(VmState.RUNNING, host="h2"), seen("absent", host="h1")) is Drift.NONE
    assert drift(None, seen("running", managed=False)) is Drift.UNMANAGED
    assert drift(None, seen("shutoff", managed=True)) is Drift.UNMANAGED
    assert drift(None, seen("absent")) is Drift.NONE


def test_lifecycle_events_that_settle_nothing():
    assert observed_from_lifecycle("v", "h1", "stopped", "migrated", 1.0) is None
    assert observed_from_lifecycle("v", "h1", "defined", "0", 1.0) is None
    assert observed_from_lifecycle("v", "h1", "stopped", "failed", 1.0).state == "shutoff"
