"""Operations counted as they start and end, by kind (the workflow type), for Prometheus.

A workflow interceptor of the orchestrator worker. Workflow code is replayed whenever a worker
rebuilds a workflow from its history (a restart, a cache eviction, a query on an evicted run), so
the counters move only when the code is not replaying: a start once, when the first workflow task
runs live; an end once, when the task that completes, fails or cancels the run runs live. A worker
that dies after running that task but before the server recorded it runs it again live, and
counts it again: rare, and bounded by one per crash.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

with workflow.unsafe.imports_passed_through():
    from shared import metrics


def ends_run(exc: BaseException) -> bool:
    """Whether an exception out of a workflow ends its run (see ``outcome_of``)."""
    return outcome_of(exc) is not None


def outcome_of(exc: BaseException) -> metrics.Outcome | None:
    """How an exception out of a workflow ends its run; None when it does not end it: a bug
    (any other exception) fails only the workflow task, which the worker retries, and
    continue-as-new goes on in a new run."""
    if is_cancelled_exception(exc):
        return metrics.Outcome.CANCELLED
    if isinstance(exc, FailureError):
        return metrics.Outcome.FAILED
    return None


def _live(effect) -> None:
    """Run ``effect`` (a metric update: no commands, no workflow state) unless replaying."""
    if workflow.unsafe.is_replaying():
        return
    with workflow.unsafe.sandbox_unrestricted():
        effect()


class _OperationMetrics(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        kind = workflow.info().workflow_type
        _live(lambda: metrics.operation_started(kind))
        try:
            result = await super().execute_workflow(input)
        except BaseException as exc:
            outcome = outcome_of(exc)
            if outcome is not None:
                self._finish(kind, outcome)
            raise
        self._finish(kind, metrics.Outcome.SUCCEEDED)
        return result

    @staticmethod
    def _finish(kind: str, outcome: metrics.Outcome) -> None:
        # From the start event (what the API started), so time queued before a worker took it counts.
        duration_s = (workflow.now() - workflow.info().workflow_start_time).total_seconds()
        _live(lambda: metrics.operation_finished(kind, outcome, duration_s))


class OperationMetrics(Interceptor):
    """Counts every workflow run of the worker in ``vmflow_operations_*_total{kind}`` and observes
    ``vmflow_operation_duration_seconds{kind,outcome}`` (and, for HostFailover, the recovery time)."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _OperationMetrics
