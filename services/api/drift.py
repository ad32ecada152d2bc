"""Pure: what the inventory should do when a host says how a VM's domain is.

The inventory changes a VM only when no operation holds it (a settled state), only for facts
newer than its own last change, and only for facts from the host it records. Everything else
is either nothing to do, or a domain to remove (a stale copy on a host the VM no longer lives
on) or to report (a domain no inventory row owns).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.models import SETTLED_STATES, VmState

# libvirt's reasons for a stop that the guest did not ask for.
_CRASH_REASONS = frozenset({"crashed", "failed"})


class Drift(StrEnum):
    NONE = "none"
    RUNNING = "running"  # runs, the inventory said otherwise
    STOPPED = "stopped"  # the guest powered off (or someone destroyed it outside vmflow)
    CRASHED = "crashed"  # QEMU died or the guest panicked
    LOST = "lost"  # no domain on its host any more (a host rebuilt, a definition removed)
    STALE_COPY = "stale_copy"  # a domain of the VM on a host it no longer lives on
    UNMANAGED = "unmanaged"  # a domain no inventory row owns: reported, never adopted nor touched


@dataclass(frozen=True)
class Observed:
    vm_id: str
    host_id: str
    state: str  # running, paused, shutoff, crashed, absent, ...
    reason: str  # libvirt's reason for the state, e.g. "shutdown", "destroyed", "failed"
    at_s: float
    managed: bool = True  # the domain carries vmflow's metadata (vmflow defined it)


@dataclass(frozen=True)
class Recorded:
    vm_id: str
    state: VmState
    host_id: str | None
    updated_at_s: float


def drift(recorded: Recorded | None, seen: Observed) -> Drift:
    if recorded is None:
        # Not ours (or no longer: its VM was deleted while its host was away). Reported only:
        # without a row nothing says another copy lives on, and something else may own it.
        return Drift.NONE if seen.state == "absent" else Drift.UNMANAGED
    if recorded.state not in SETTLED_STATES or seen.at_s <= recorded.updated_at_s:
        return Drift.NONE
    if seen.host_id != recorded.host_id:
        return Drift.NONE if seen.state == "absent" else Drift.STALE_COPY
    if seen.state == "running":
        return Drift.RUNNING if recorded.state is not VmState.RUNNING else Drift.NONE
    if seen.state == "absent":
        return Drift.LOST if recorded.state in (VmState.RUNNING, VmState.STOPPED, VmState.CRASHED) else Drift.NONE
    if recorded.state is not VmState.RUNNING:
        return Drift.NONE
    if seen.state == "crashed" or (seen.state == "shutoff" and seen.reason in _CRASH_REASONS):
        return Drift.CRASHED
    if seen.state == "shutoff":
        return Drift.STOPPED
    return Drift.NONE


def observed_from_lifecycle(vm_id: str, host_id: str, event: str, reason: str, at_s: float,
                            managed: bool = True) -> Observed | None:
    """The domain state a lifecycle event implies; None for events that settle nothing (a
    definition changed, a guest paused for a moment)."""
    state = {"started": "running", "resumed": "running", "stopped": "shutoff", "crashed": "crashed",
             "undefined": "absent"}.get(event)
    if state is None or (event == "stopped" and reason == "migrated") or (event == "started" and reason == "migrated"):
        return None
    return Observed(vm_id, host_id, state, reason, at_s, managed)
