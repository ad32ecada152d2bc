"""The orchestrator's operation counters against the real Temporal dev server: each run counts
one start and one end, with its outcome, however often a worker replays it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from prometheus_client import REGISTRY

    from workflows.metering import OperationMetrics


@workflow.defn(name="MeteredNaps")
class MeteredNaps:
    """Sleeps ``naps`` short timers: one workflow task per nap, each a replay without a cache."""

    @workflow.run
    async def run(self, naps: int) -> str:
        for _ in range(naps):
            await workflow.sleep(timedelta(milliseconds=50))
        return "rested"


@workflow.defn(name="MeteredFailure")
class MeteredFailure:
    @workflow.run
    async def run(self) -> None:
        await workflow.sleep(timedelta(milliseconds=50))
        raise ApplicationError("refused", type="conflict", non_retryable=True)


@workflow.defn(name="MeteredWait")
class MeteredWait:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts(kind: str) -> dict[str, float]:
    return {
        "started": sample("vmflow_operations_started_total", kind=kind),
        "succeeded": sample("vmflow_operations_succeeded_total", kind=kind),
        "failed": sample("vmflow_operations_failed_total", kind=kind),
        "cancelled": sample("vmflow_operations_cancelled_total", kind=kind),
        **{f"duration {outcome}": sample("vmflow_operation_duration_seconds_count", kind=kind, outcome=outcome)
           for outcome in ("succeeded", "failed", "cancelled")},
    }


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before if after[key] != before[key]}


def metered_worker(env: WorkflowEnvironment, queue: str) -> Worker:
    # No workflow cache: every workflow task rebuilds the run by replaying its history first.
    return Worker(env.client, task_queue=queue, workflows=[MeteredNaps, MeteredFailure, MeteredWait],
                  interceptors=[OperationMetrics()], max_cached_workflows=0)


async def test_a_run_replayed_at_every_task_counts_one_start_and_one_success(env: WorkflowEnvironment):
    queue = f"metered-{uuid.uuid4().hex[:8]}"
    before = counts("MeteredNaps")
    async with metered_worker(env, queue):
        handle = await env.client.start_workflow(MeteredNaps.run, 3, id=f"naps-{uuid.uuid4()}", task_queue=queue)
        assert await handle.result() == "rested"
    after = counts("MeteredNaps")
    assert moved(before, after) == {"started": 1, "succeeded": 1, "duration succeeded": 1}
    total_s = sample("vmflow_operation_duration_seconds_sum", kind="MeteredNaps", outcome="succeeded")
    assert total_s >= 0.15  # three naps of 50 ms at least

    # Replaying the whole history (as a query on an evicted run would) counts nothing again.
    await Replayer(workflows=[MeteredNaps], interceptors=[OperationMetrics()]).replay_workflow(
        await handle.fetch_history())
    assert counts("MeteredNaps") == after


async def test_a_failed_run_counts_as_failed(env: WorkflowEnvironment):
    queue = f"metered-{uuid.uuid4().hex[:8]}"
    before = counts("MeteredFailure")
    async with metered_worker(env, queue):
        with pytest.raises(WorkflowFailureError):
            await env.client.execute_workflow(MeteredFailure.run, id=f"fail-{uuid.uuid4()}", task_queue=queue)
    assert moved(before, counts("MeteredFailure")) == {"started": 1, "failed": 1, "duration failed": 1}


async def test_a_cancelled_run_counts_as_cancelled(env: WorkflowEnvironment):
    queue = f"metered-{uuid.uuid4().hex[:8]}"
    before = counts("MeteredWait")
    async with metered_worker(env, queue):
        handle = await env.client.start_workflow(MeteredWait.run, id=f"wait-{uuid.uuid4()}", task_queue=queue)
        while counts("MeteredWait")["started"] == before["started"]:
            await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert moved(before, counts("MeteredWait")) == {"started": 1, "cancelled": 1, "duration cancelled": 1}
