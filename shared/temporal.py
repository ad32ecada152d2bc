"""Temporal plumbing for service processes (never imported by workflow code)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from shared.errors import VmflowError
from shared.lifecycle import run_until_signalled
from shared.settings import CommonSettings


async def connect_temporal(settings: CommonSettings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


async def serve(worker: Worker, nc: NatsClient) -> None:
    """Run ``worker`` until the process is told to stop, then shut it down and drain NATS."""
    run = asyncio.create_task(worker.run())
    try:
        await run_until_signalled()
    finally:
        await worker.shutdown()
        run.cancel()
        await nc.drain()


class _ActivityContext(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, heartbeat_every_s: float | None,
                 reporting: frozenset[str]) -> None:
        super().__init__(next)
        self._heartbeat_every_s = heartbeat_every_s
        self._reporting = reporting

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        vm_id = getattr(input.args[0], "vm_id", None) if input.args else None
        beat = self._heartbeat_every_s and info.activity_type not in self._reporting
        beating = asyncio.create_task(self._beat()) if beat else None
        with structlog.contextvars.bound_contextvars(
            activity=info.activity_type, op_id=info.workflow_id, vm_id=vm_id, attempt=info.attempt
        ):
            try:
                return await super().execute_activity(input)
            except VmflowError as exc:
                structlog.get_logger(__name__).warning("activity failed", code=exc.code, error=exc.message)
                # Workflows see the platform's code and message; Temporal retries only what may help.
                raise ApplicationError(
                    exc.message, type=exc.code, non_retryable=not exc.retryable
                ) from None
            finally:
                if beating is not None:
                    beating.cancel()

    async def _beat(self) -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(self._heartbeat_every_s or 2.0)


class ActivityContext(Interceptor):
    """For every activity: binds op_id, vm_id and the activity name to the log context, and turns
    ``shared.errors`` into ApplicationErrors carrying the same code. With ``heartbeat_every_s``,
    every activity also heartbeats that often while it runs (a host's worker: a worker that died
    is then noticed by the server within the heartbeat timeout, whatever the activity), except
    those named in ``reporting``, whose own heartbeats carry their progress."""

    def __init__(self, heartbeat_every_s: float | None = None, reporting: tuple[str, ...] = ()) -> None:
        self._heartbeat_every_s = heartbeat_every_s
        self._reporting = frozenset(reporting)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityContext(next, self._heartbeat_every_s, self._reporting)
