"""Pure failover and crash policy: which VMs restart where after a host failed, and whether a
crashed guest is started again. Safe to import inside workflows."""

from __future__ import annotations

from collections.abc import Sequence

from shared.models import SETTLED_STATES, CrashAction, CrashPolicy, VmState, VmSummary
from shared.storage_models import PoolKind


def failover_order(vms: Sequence[VmSummary]) -> tuple[list[VmSummary], list[VmSummary], list[VmSummary]]:
    """(restart elsewhere, in priority order; leave in error, not HA; skip, held by an operation).
    Highest ``restart_priority`` first, then by name, so the order is stable across replays."""
    restart, leave, busy = [], [], []
    for vm in vms:
        if vm.state not in SETTLED_STATES:
            busy.append(vm)
        elif vm.ha and vm.storage is PoolKind.SHARED:
            restart.append(vm)
        else:
            leave.append(vm)
    restart.sort(key=lambda vm: (-vm.restart_priority, vm.name, vm.vm_id))
    return restart, leave, busy


def restarts_again(policy: CrashPolicy, crashes_s: Sequence[float], now_s: float) -> tuple[bool, tuple[float, ...]]:
    """Whether a guest that crashed at ``now_s`` starts again in place, and the crash history to
    keep (crashes inside the window, this one included)."""
    recent = tuple(t for t in crashes_s if now_s - t < policy.window_s) + (now_s,)
    if policy.action is CrashAction.NONE:
        return False, recent
    return len(recent) <= policy.max_restarts, recent


def is_settled(state: VmState) -> bool:
    return state in SETTLED_STATES
