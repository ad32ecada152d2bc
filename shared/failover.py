"""Failover and crash handling: their values (what a failover, a restart and a fence are asked
and answer) and their pure policy (which VMs restart where after a host failed, whether a crashed
guest is started again). Safe to import inside workflows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.models import SETTLED_STATES, VmState, VmSummary
from shared.storage_models import PoolKind


class CrashAction(StrEnum):
    RESTART = "restart"  # start it again in place, up to a number of times in a window
    NONE = "none"  # leave it crashed for its owner


@dataclass(frozen=True)
class CrashPolicy:
    action: CrashAction = CrashAction.RESTART
    max_restarts: int = 3
    window_s: float = 600.0


@dataclass(frozen=True)
class RestartInput:
    """Start a VM again without its owner asking: after a crash (in place), after its domain was
    lost (in place, defined anew), or after its host failed (``host_id`` None: placed elsewhere,
    never on ``exclude_hosts``). ``power_on`` False only defines it (a stopped VM)."""

    vm: VmSummary
    reason: str
    host_id: str | None
    exclude_hosts: tuple[str, ...] = ()
    power_on: bool = True
    boot_timeout_s: float = 120.0


@dataclass(frozen=True)
class FailoverInput:
    host_id: str
    epoch: int  # the failure's epoch: the last heartbeat's second, so one failure fails over once
    reason: str
    concurrency: int = 4
    boot_timeout_s: float = 120.0
    fence_attempts: int = 4
    capacity_retry_s: float = 15.0
    capacity_retry_rounds: int = 240  # an hour at the default interval


@dataclass(frozen=True)
class StaleCopy:
    host_id: str
    vm_id: str


@dataclass(frozen=True)
class FenceRequest:
    host_id: str
    action: str = "off"  # off, on, status, reboot (the fence-agents actions)


@dataclass(frozen=True)
class FenceResult:
    host_id: str
    action: str
    power: str  # "off", "on" or "unknown" as the agent's status says afterwards
    output: str = ""


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
