"""The progress every workflow exposes through its ``progress`` query, and keeps in its memo
once it ends."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

with workflow.unsafe.imports_passed_through():
    from shared.models import OperationProgress
    from shared.operation_tags import HOST_IDS, KIND, PROGRESS_MEMO, hosts_with

from workflows.metering import ends_run


class ProgressTracker:
    """The operation's progress; a host it reaches joins its ``VmflowHostIds`` search attribute."""

    def __init__(self, kind: str) -> None:
        self.value = OperationProgress(kind=kind, vm_id="", step="queued")

    def begin(self, vm_id: str, host_id: str | None = None) -> None:
        self.value = OperationProgress(self.value.kind, vm_id, "queued", (), host_id)
        _tag_host(host_id)

    @property
    def step(self) -> str:
        return self.value.step

    def advance(self, step: str, host_id: str | None = None) -> None:
        """Move to ``step``; the step left behind joins ``steps_done``."""
        v = self.value
        done = v.steps_done if v.step in ("queued", step) else (*v.steps_done, v.step)
        self.value = OperationProgress(v.kind, v.vm_id, step, done, host_id or v.host_id, v.details)
        _tag_host(host_id)

    def note(self, line: str) -> None:
        v = self.value
        self.value = OperationProgress(v.kind, v.vm_id, v.step, v.steps_done, v.host_id, (*v.details, line))


TAG_HOSTS_PATCH = "vmflow-tag-hosts"


def _tag_host(host_id: str | None) -> None:
    """Add ``host_id`` to the operation's hosts when it is new there. Only an operation started
    with tags adds any: one started untagged replays as it first ran."""
    attributes = workflow.info().typed_search_attributes
    # patched: a run that an older worker progressed without this replays without it.
    if not host_id or KIND not in attributes or not workflow.patched(TAG_HOSTS_PATCH):
        return
    hosts = attributes.get(HOST_IDS) or []
    if host_id not in hosts:
        workflow.upsert_search_attributes([HOST_IDS.value_set(hosts_with(hosts, host_id))])


FINAL_PROGRESS_PATCH = "vmflow-final-progress-memo"


class _FinalProgress(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            result = await super().execute_workflow(input)
        except BaseException as exc:
            if ends_run(exc):
                _keep_final_progress()
            raise
        _keep_final_progress()
        return result


def _keep_final_progress() -> None:
    # patched: a run an older worker ended without the memo replays without it.
    handler = workflow.get_query_handler("progress")
    if handler is not None and workflow.patched(FINAL_PROGRESS_PATCH):
        workflow.upsert_memo({PROGRESS_MEMO: handler()})


class FinalProgress(Interceptor):
    """Keeps an ending run's ``progress`` in its memo (``PROGRESS_MEMO``), in the same task that
    ends it: asking an ended operation for its progress needs no worker to replay its history."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _FinalProgress
