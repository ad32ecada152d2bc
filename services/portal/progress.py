"""How far along an operation is, as a share for a progress bar: the steps its workflow takes on
the way to success, and within a long step (a migration's copy) the share its activity reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The steps each kind passes through when all goes well (workflows/*.py), in order. A kind whose
# path depends on its input has one plan per path: a power action's on the action, a migration's
# on whether it marks the VM itself ("begin": a maintenance's moves) or the API did.
PLANNED_STEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ProvisionVm": (("place", "create_volume", "define", "start", "wait_booted", "record", "done"),),
    "DeleteVm": (("mark_deleting", "undefine", "release_host", "delete_volume", "release_claim", "forget", "done"),),
    "LiveMigrate": (("check", "place", "prepare_host", "prepare_disk", "migrate", "record", "done"),
                    ("begin", "check", "place", "prepare_host", "prepare_disk", "migrate", "record", "done")),
    "VmPowerAction": (("prepare", "start", "wait_booted", "record", "done"),
                      ("stop", "record", "done"),
                      ("reboot", "wait_booted", "record", "done")),
    "HostMaintenance": (("disable", "evacuate", "record", "done"),),
}
FAILED_STEPS = frozenset({"failed", "cancelled", "compensating", "recovering"})
SAME_PLACE_IN_PLAN = {"copy_disk": "prepare_disk"}  # a cold move copies its disk where a live one prepares it


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


def _plan_of(kind: str, step: str, steps_done: Sequence[str]) -> tuple[str, ...] | None:
    """The kind's plan that has ``step``, preferring one that has every step taken so far too
    (a stop's "record" is its second of three, a start's fourth of five); None: no plan has it."""
    fitting = [plan for plan in PLANNED_STEPS.get(kind, ()) if step in plan]
    return next((plan for plan in fitting if set(steps_done) <= set(plan)), fitting[0] if fitting else None)


def progress_of(operation: dict[str, Any]) -> Progress:
    """``operation`` is the API's operation shape (GET /v1/operations/{id})."""
    state, step = operation.get("state", "running"), operation.get("step") or "queued"
    if state == "succeeded":
        return Progress(100, "done", False)
    if state != "running":
        error = operation.get("error") or {}
        return Progress(100, error.get("message") or state, True)
    step = SAME_PLACE_IN_PLAN.get(step, step)
    steps_done = [SAME_PLACE_IN_PLAN.get(done, done) for done in operation.get("steps_done") or ()]
    plan = _plan_of(operation.get("kind", ""), step, steps_done)
    if plan is None:
        return Progress(min(90, 10 + 15 * len(steps_done)), step.replace("_", " "), step in FAILED_STEPS)
    index = plan.index(step)
    share = (index + (_copy_share(operation.get("activity_progress")) or 0.0)) / (len(plan) - 1)
    return Progress(max(3, min(99, round(100 * share))), step.replace("_", " "), False)


def bar_percent(used: float, limit: float | None) -> int:
    """A usage bar's width; no limit (unlimited) shows as empty."""
    if not limit:
        return 0
    return max(0, min(100, round(100 * used / limit)))
