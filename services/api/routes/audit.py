"""/v1/audit: who changed what, when, and how it ended. Admins see every record; anyone else
its own tenant's. Newest first, a page at a time.

A record of a change that started an operation says ``accepted`` while the operation runs; the
page that shows it after the operation ended gives it the operation's outcome, and keeps it."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from services.api.audit import AuditRecord
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared.auth import Principal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditPublic(BaseModel):
    id: int
    at: datetime
    request_id: str
    token_id: str | None
    user: str | None
    tenant: str | None  # whose trail it is in: None for the fleet's (admins, no valid token)
    token_tenant: str | None
    role: str | None
    action: str
    path: str
    status: int
    outcome: str
    code: str | None
    operation_id: str | None
    location: str | None
    detail: str | None


# How an ended operation's change ends in the trail.
_OUTCOMES = {WorkflowExecutionStatus.COMPLETED: "done", WorkflowExecutionStatus.CANCELED: "cancelled"}


async def _settle(p: Platform, record: AuditRecord) -> None:
    """Give an ``accepted`` record its operation's outcome, if the operation ended."""
    handle = p.temporal.get_workflow_handle(record.operation_id or "")
    try:
        status = (await handle.describe()).status
    except Exception:  # Temporal away, or the operation's history gone: the record stays as it is
        return
    if status in (None, WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.CONTINUED_AS_NEW):
        return
    outcome, code = _OUTCOMES.get(status, "failed"), None
    if outcome == "failed":
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            code = exc.cause.type if isinstance(exc.cause, ApplicationError) else "internal"
        except Exception:
            code = "internal"
    await asyncio.to_thread(p.audit.settle, record.id, outcome, code)
    record.outcome, record.code = outcome, code


@router.get("", response_model=list[AuditPublic])
async def list_audit(response: Response, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                     p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """``X-Total-Count`` says how many records there are."""
    total, rows = await asyncio.to_thread(p.audit.page, who.visible_tenant, offset, limit)
    await asyncio.gather(*(_settle(p, r) for r in rows if r.outcome == "accepted" and r.operation_id))
    response.headers["X-Total-Count"] = str(total)
    return [AuditPublic.model_validate(r, from_attributes=True) for r in rows]
