"""/v1/operations: an operation is a workflow; its id is the workflow id.

An operation belongs to the tenant in its memo (the API starts every operation with one), else
to the tenant of the VM its id names (a failover's restart of it: the tenant may follow it);
anything else (a host's maintenance or failover) is the fleet's, which only admins see. Another
tenant's operation is not found, nor listed. A tenant cancels only what it started itself: an
operation an admin or the platform started on its VM is refused (403).

The list searches the operations' search attributes (``shared.operation_tags``): the same
filters work in the Temporal UI, e.g. ``VmflowHostIds = 'h2'``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from temporalio.client import (
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from services.api.operation_listing import (
    OPERATION_STATES,
    OperationFilter,
    temporal_url,
    visibility_query,
)
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared.auth import Principal, Role
from shared.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from shared.models import OperationProgress
from shared.names import (
    OPERATION_BY_ADMIN_MEMO,
    OPERATION_TENANT_MEMO,
    vm_id_of_operation,
)
from shared.operation_tags import (
    HOST_IDS,
    KIND,
    PROGRESS_MEMO,
    SUMMARY_MEMO,
    TENANT,
    VM_ID,
)

router = APIRouter(prefix="/v1/operations", tags=["operations"])
QUERY_TIMEOUT_S = 3.0  # the longest an operation's view waits for its progress

# vm-<id>-<action>[-<key>], the storage operations on images and volumes by name, host
# operations (host-<id>-maintenance, host-<id>-failover-<epoch>) and network-<id>-<action>.
OPERATION_ID = re.compile(
    r"^(vm-[0-9a-f-]{36}|volume-[A-Za-z0-9-]{1,63}|image-[A-Za-z0-9._-]{1,63}|host-[A-Za-z0-9-]{1,63}"
    r"|network-net-[0-9a-f]{12})"
    r"-[a-z]+(-[A-Za-z0-9-]{1,80})?$"
)


class OperationError(BaseModel):
    code: str
    message: str


class Operation(BaseModel):
    id: str
    kind: str
    state: str
    done: bool
    step: str | None
    steps_done: list[str]
    vm_id: str | None
    host_id: str | None
    result: str | None
    error: OperationError | None
    details: list[str] = []
    activity_progress: dict[str, Any] | None = None  # e.g. a live migration's job stats
    started_at: datetime | None
    closed_at: datetime | None
    temporal_url: str | None = None  # its page in the Temporal UI: for admins, when the API knows the UI


class OperationListed(BaseModel):
    """An operation in a list: what it is about, from its search attributes (GET
    /v1/operations/{id} adds its progress and outcome)."""

    id: str
    kind: str
    state: str
    done: bool
    vm_id: str | None
    host_ids: list[str]  # every host it touched: source and destination of a move
    tenant: str | None  # None: the fleet's
    summary: str | None
    started_at: datetime | None
    closed_at: datetime | None
    temporal_url: str | None
    cancellable: bool = False  # running, and the caller may cancel it (what a portal offers)


async def _owner(p: Platform, op_id: str, desc) -> str | None:
    """The tenant the operation belongs to; None: the fleet's."""
    tenant = await desc.memo_value(OPERATION_TENANT_MEMO, None)
    if tenant is not None:
        return tenant
    vm_id = vm_id_of_operation(op_id)
    vm = await asyncio.to_thread(p.inventory.find, vm_id) if vm_id else None
    return vm.tenant if vm is not None else None


async def _describe(p: Platform, op_id: str, who: Principal):
    """Raises NotFound for an unknown operation or one ``who`` may not see."""
    if not OPERATION_ID.fullmatch(op_id):
        raise NotFound(f"no operation with id '{op_id}'")
    handle = p.temporal.get_workflow_handle(op_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no operation with id '{op_id}'") from exc
        raise
    if not who.is_admin and await _owner(p, op_id, desc) != who.tenant:
        raise NotFound(f"no operation with id '{op_id}'")
    return handle, desc


async def _activity_progress(p: Platform, desc) -> dict[str, Any] | None:
    """The latest heartbeat of the operation's running activity, if it reports one."""
    for pending in desc.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            values = await p.temporal.data_converter.decode(pending.heartbeat_details.payloads)
            if values and isinstance(values[0], dict):
                return {"activity": pending.activity_type.name, **values[0]}
    return None


def _state(status: WorkflowExecutionStatus | None) -> str:
    return OPERATION_STATES.get(status, "unknown") if status else "unknown"


def _temporal_url(p: Platform, op_id: str, who: Principal) -> str | None:
    """The operators' link: the Temporal UI shows every tenant's operations."""
    if not who.is_admin:
        return None
    return temporal_url(p.settings.temporal_ui_url, p.settings.temporal_namespace, op_id)


@router.get("", response_model=list[OperationListed])
async def list_operations(response: Response, vm_id: str | None = None, host_id: str | None = None,
                          tenant: str | None = None, kind: str | None = None, state: str | None = None,
                          limit: int = Query(50, ge=1, le=200),
                          page_token: str | None = Query(None, max_length=2000, description=(
                              "the X-Next-Page-Token of the previous page: the next older ones")),
                          p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Operations, running or most recently finished first, filtered by ``vm_id``, ``host_id``
    (any host it touched), ``tenant`` (admins; anyone else sees its own tenant's only), ``kind``
    (the workflow type) and ``state``, ``limit`` at a time: ``X-Next-Page-Token`` names the next
    page when there is one. 422 for a malformed filter or page token."""
    query = visibility_query(OperationFilter(vm_id, host_id, tenant, kind, state), who.visible_tenant)
    if query is None:
        return []
    listing = p.temporal.list_workflows(query or None, page_size=limit, next_page_token=_page_token(page_token))
    try:
        await listing.fetch_next_page()
    except RPCError as exc:
        if exc.status is RPCStatusCode.INVALID_ARGUMENT and page_token:
            raise InvalidRequest("page_token: not a page of this listing") from exc
        raise ServiceUnavailable(f"could not list the operations: {exc.message}") from exc
    found = list(listing.current_page or ())
    if listing.next_page_token:
        response.headers["X-Next-Page-Token"] = base64.urlsafe_b64encode(listing.next_page_token).decode()
    if not who.is_admin:  # the same rule as for one operation
        found = [ex for ex in found if await _owner(p, ex.id, ex) == who.tenant]
    found.sort(key=lambda ex: ex.start_time, reverse=True)
    return [await _listed(p, ex, who) for ex in found]


def _page_token(token: str | None) -> bytes | None:
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (ValueError, binascii.Error):
        raise InvalidRequest("page_token: not a page of this listing") from None


async def _may_cancel(who: Principal, execution) -> bool:
    """An admin cancels any operation; a member only one its tenant started itself (not one an
    admin or the platform started on its VM)."""
    if who.is_admin:
        return True
    return (who.role.allows(Role.MEMBER)
            and await execution.memo_value(OPERATION_TENANT_MEMO, None) == who.tenant
            and not await execution.memo_value(OPERATION_BY_ADMIN_MEMO, True))


async def _listed(p: Platform, ex: WorkflowExecution, who: Principal) -> OperationListed:
    tags = ex.typed_search_attributes
    state = _state(ex.status)
    return OperationListed(
        id=ex.id,
        kind=tags.get(KIND) or ex.workflow_type,
        state=state,
        done=state != "running",
        vm_id=tags.get(VM_ID) or vm_id_of_operation(ex.id),
        host_ids=list(tags.get(HOST_IDS) or []),
        tenant=tags.get(TENANT) or await ex.memo_value(OPERATION_TENANT_MEMO, None),
        summary=await ex.memo_value(SUMMARY_MEMO, None),
        started_at=ex.start_time,
        closed_at=ex.close_time,
        temporal_url=_temporal_url(p, ex.id, who),
        cancellable=state == "running" and await _may_cancel(who, ex),
    )


async def _progress(handle: WorkflowHandle, desc: WorkflowExecutionDescription) -> OperationProgress | None:
    """What the operation says of itself: an ended one from its memo; a running one (or one
    ended before it kept it there) by a query, which needs the orchestrator's attention: a busy
    one (a burst of operations) must not hold the answer up, the state alone still answers."""
    if desc.status != WorkflowExecutionStatus.RUNNING:
        kept = await desc.memo_value(PROGRESS_MEMO, None, type_hint=OperationProgress)
        if kept is not None:
            return kept
    try:
        return await asyncio.wait_for(handle.query("progress", result_type=OperationProgress), QUERY_TIMEOUT_S)
    except Exception:  # a query needs a worker
        return None


_NOT_YET = object()


async def _wait_done(handle: WorkflowHandle, wait_s: float) -> Any:
    """The operation's result once it succeeded within ``wait_s``; ``_NOT_YET`` otherwise."""
    try:
        return await asyncio.wait_for(handle.result(), wait_s)
    except Exception:  # still running after wait_s, or ended in failure: the view says which
        return _NOT_YET


@router.post("/{op_id}/cancel", status_code=202, response_model=Operation)
async def cancel_operation(op_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Ask a running operation to stop. A migration aborts libvirt's job and leaves the VM where
    it was. 409 when the operation has finished already."""
    handle, desc = await _describe(p, op_id, who)
    if not await _may_cancel(who, desc):
        raise Forbidden(f"operation {op_id} was started by the fleet's operators; only an admin cancels it")
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise Conflict(f"operation {op_id} is {OPERATION_STATES.get(desc.status, 'finished')}; nothing to cancel")
    await handle.cancel()
    return await get_operation(op_id, p, who, wait_s=0.0)


@router.get("/{op_id}", response_model=Operation)
async def get_operation(op_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal),
                        wait_s: float = Query(0.0, ge=0, le=60, description=(
                            "answer as soon as the operation is done, or after this long: "
                            "a client that waits asks once instead of polling"))):
    handle, desc = await _describe(p, op_id, who)
    result, error = _NOT_YET, None
    if wait_s and desc.status == WorkflowExecutionStatus.RUNNING:
        result = await _wait_done(handle, wait_s)  # Temporal's long poll on the history: no worker is asked
        desc = await handle.describe()
    state = _state(desc.status)
    progress = await _progress(handle, desc)
    if result is _NOT_YET:  # the wait's own answer saves reading the history again
        result = await handle.result() if desc.status == WorkflowExecutionStatus.COMPLETED else None
    if desc.status == WorkflowExecutionStatus.CANCELED:
        error = OperationError(code="cancelled", message="cancelled by request")
    elif desc.status == WorkflowExecutionStatus.FAILED:
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                error = OperationError(code=cause.type or "internal", message=cause.message)
            else:
                error = OperationError(code="internal", message=str(cause))
    return Operation(
        id=op_id,
        kind=desc.workflow_type,
        state=state,
        done=state != "running",
        step=progress.step if progress else None,
        steps_done=list(progress.steps_done) if progress else [],
        vm_id=(progress.vm_id or None) if progress else None,
        host_id=progress.host_id if progress else None,
        result=str(result) if result is not None else None,
        error=error,
        details=list(progress.details) if progress else [],
        activity_progress=await _activity_progress(p, desc) if state == "running" else None,
        started_at=desc.start_time,
        closed_at=desc.close_time,
        temporal_url=_temporal_url(p, op_id, who),
    )
