"""Temporal plumbing for service processes (never imported by workflow code)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from shared import metrics
from shared.errors import VmflowError
from shared.lifecycle import run_until_signalled
from shared.operation_tags import SEARCH_ATTRIBUTES
from shared.settings import CommonSettings

log = structlog.get_logger(__name__)


async def connect_temporal(settings: CommonSettings, *, starts_workflows: bool = False) -> Client:
    """A client of the settings' namespace. A process that ``starts_workflows`` registers the
    operations' search attributes first: a start carrying an unknown one is refused."""
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    if starts_workflows:
        await ensure_search_attributes(client, settings.temporal_namespace)
    _keep(asyncio.create_task(watch_temporal(_health_probe(client))))
    return client


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register each of ``operation_tags.SEARCH_ATTRIBUTES`` the namespace lacks. Idempotent, and
    safe when several processes do it at once. Raises VmflowError when one exists with another
    type; a server that does not let this client register (a hosted one) is only warned about:
    its operators register them."""
    wanted = {key.name: int(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace))
    except RPCError as exc:
        if exc.status not in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            raise
        log.warning("search attributes not checked: register them on the server",
                    attributes=sorted(wanted), error=exc.message)
        return
    present = {**listed.system_attributes, **listed.custom_attributes}
    clashes = [f"{name} is {IndexedValueType.Name(present[name])}, not {IndexedValueType.Name(type_)}"
               for name, type_ in wanted.items() if name in present and present[name] != type_]
    if clashes:
        raise VmflowError(f"search attributes of namespace {namespace} clash: {'; '.join(clashes)}")
    missing = {name: type_ for name, type_ in wanted.items() if name not in present}
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:  # another process registered them meanwhile
            raise
    log.info("search attributes registered", namespace=namespace, attributes=sorted(missing))


async def serve(worker: Worker, nc: NatsClient) -> None:
    """Run ``worker`` until the process is told to stop, then shut it down and drain NATS."""
    run = asyncio.create_task(worker.run())
    try:
        await run_until_signalled()
    finally:
        await worker.shutdown()
        run.cancel()
        await nc.drain()


# -- is Temporal there? -----------------------------------------------------------------------

TEMPORAL_HEALTH_INTERVAL_S = 5.0
_background: set[asyncio.Task] = set()  # referenced until done: the loop keeps only weak references


def _keep(task: asyncio.Task) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


def _health_probe(client: Client) -> Callable[[], Awaitable[bool]]:
    timeout = timedelta(seconds=min(3.0, TEMPORAL_HEALTH_INTERVAL_S))
    return lambda: client.service_client.check_health(timeout=timeout)


async def watch_temporal(probe: Callable[[], Awaitable[bool]],
                         interval_s: float = TEMPORAL_HEALTH_INTERVAL_S) -> None:
    """Forever: run ``probe`` (a health check of the Temporal frontend) every ``interval_s``,
    keep ``vmflow_temporal_connected`` at its answer and count each return after a failed check
    in ``vmflow_temporal_reconnects_total``. The client reconnects by itself; this only watches,
    so an outage shorter than the interval goes unseen. Starts connected: the client just was."""
    connected = True
    metrics.TEMPORAL_CONNECTED.set(1)
    while True:
        await asyncio.sleep(interval_s)
        try:
            up = bool(await asyncio.wait_for(probe(), interval_s))
        except Exception:
            up = False
        if up and not connected:
            metrics.TEMPORAL_RECONNECTS.inc()
            log.info("temporal reachable again")
        elif connected and not up:
            log.warning("temporal unreachable")
        connected = up
        metrics.TEMPORAL_CONNECTED.set(1 if up else 0)


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
                log.warning("activity failed", code=exc.code, error=exc.message)
                # Workflows see the platform's code and message; Temporal retries only what may help.
                raise ApplicationError(
                    exc.message, type=exc.code, non_retryable=not exc.retryable
                ) from None
            finally:
                if beating is not None:
                    beating.cancel()

    async def _beat(self) -> None:
        # The first beat after one interval: a quick activity completes without one (one
        # round trip less through a host's link).
        while True:
            await asyncio.sleep(self._heartbeat_every_s or 2.0)
            activity.heartbeat()


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
