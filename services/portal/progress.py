"""How far along an operation is, as a share for a progress bar: the steps its workflow takes on
the way to success, and within a long step (a migration's copy) the share its activity reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The steps each kind passes through when all goes well (workflows/*.py), in order.
PLANNED_STEPS: dict[str, tuple[str, ...]] = {
    "ProvisionVm": ("place", "create_volume", "define", "start", "wait_booted", "record", "done"),
    "DeleteVm": ("mark_deleting", "undefine", "release_host", "delete_volume", "release_claim", "forget", "done"),
    "LiveMigrate": ("check", "place", "prepare_host", "prepare_disk", "migrate", "record", "done"),
    "VmPowerAction": ("prepare", "start", "wait_booted", "record", "done"),
    "HostMaintenance": ("disable", "evacuate", "record", "done"),
}
FAILED_STEPS = frozenset({"failed", "cancelled", "compensating", "recovering"})


@dataclass(frozen=True)
class Progress:
    percent: int
    label: str
    failed: bool


def _copy_share(activity: dict[str, Any] | None) -> float | None:
    """A running copy's share done, from its heartbeat (processed/total bytes), if it gives one."""
    if not activity:
        return None
    for done_key, total_key in (("data_processed_bytes", "data_total_bytes"), ("processed_bytes", "total_bytes"),
                                ("data_processed", "data_total")):
        done, total = activity.get(done_key), activity.get(total_key)
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            return max(0.0, min(1.0, done / total))
    return None


def progress_of(operation: dict[str, Any]) -> Progress:
    """``operation`` is the API's operation shape (GET /v1/operations/{id})."""
    state, step = operation.get("state", "running"), operation.get("step") or "queued"
    if state == "succeeded":
        return Progress(100, "done", False)
    if state != "running":
        error = operation.get("error") or {}
        return Progress(100, error.get("message") or state, True)
    plan = PLANNED_STEPS.get(operation.get("kind", ""))
    if step == "copy_disk":
        step = "prepare_disk"
    if not plan or step not in plan:
        done = len(operation.get("steps_done") or ())
        return Progress(min(90, 10 + 15 * done), step.replace("_", " "), step in FAILED_STEPS)
    index = plan.index(step)
    share = (index + (_copy_share(operation.get("activity_progress")) or 0.0)) / (len(plan) - 1)
    return Progress(max(3, min(99, round(100 * share))), step.replace("_", " "), False)


def bar_percent(used: float, limit: float | None) -> int:
    """A usage bar's width; no limit (unlimited) shows as empty."""
    if not limit:
        return 0
    return max(0, min(100, round(100 * used / limit)))
