"""The progress every workflow exposes through its ``progress`` query."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.models import OperationProgress


class ProgressTracker:
    def __init__(self, kind: str) -> None:
        self.value = OperationProgress(kind=kind, vm_id="", step="queued")

    def begin(self, vm_id: str, host_id: str | None = None) -> None:
        self.value = OperationProgress(self.value.kind, vm_id, "queued", (), host_id)

    @property
    def step(self) -> str:
        return self.value.step

    def advance(self, step: str, host_id: str | None = None) -> None:
        """Move to ``step``; the step left behind joins ``steps_done``."""
        v = self.value
        done = v.steps_done if v.step in ("queued", step) else (*v.steps_done, v.step)
        self.value = OperationProgress(v.kind, v.vm_id, step, done, host_id or v.host_id, v.details)

    def note(self, line: str) -> None:
        v = self.value
        self.value = OperationProgress(v.kind, v.vm_id, v.step, v.steps_done, v.host_id, (*v.details, line))
